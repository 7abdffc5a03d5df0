#!/usr/bin/env python3
"""Writes a randomly initialised Llama model directory (config.json, sharded bf16 safetensors and
model.safetensors.index.json) of a real model's geometry, for memory and speed benchmarks at
scale without downloading weights. Nothing it writes is meant to be committed.

    /usr/bin/python3 scripts/make_random_llama.py --geometry tinyllama-1.1b --out runs/random-tinyllama
"""
import argparse
import json
import os
import struct

import torch

GEOMETRIES = {
    # TinyLlama-1.1B: 22 layers, hidden 2048, 32 heads, 4 key/value heads.
    "tinyllama-1.1b": dict(num_hidden_layers=22, hidden_size=2048, intermediate_size=5632,
                           num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
    # Llama-3-8B.
    "llama-8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    # A small model of the same shape family, for quick checks.
    "tiny": dict(num_hidden_layers=2, hidden_size=64, intermediate_size=176,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
}
DTYPES = {"bfloat16": (torch.bfloat16, "BF16"), "float16": (torch.float16, "F16"), "float32": (torch.float32, "F32")}


def tensor_shapes(g):
    d, i, v = g["hidden_size"], g["intermediate_size"], g["vocab_size"]
    kv = d // g["num_attention_heads"] * g["num_key_value_heads"]
    yield "model.embed_tokens.weight", (v, d)
    for layer in range(g["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (d,)
        yield p + "self_attn.q_proj.weight", (d, d)
        yield p + "self_attn.k_proj.weight", (kv, d)
        yield p + "self_attn.v_proj.weight", (kv, d)
        yield p + "self_attn.o_proj.weight", (d, d)
        yield p + "post_attention_layernorm.weight", (d,)
        yield p + "mlp.gate_proj.weight", (i, d)
        yield p + "mlp.up_proj.weight", (i, d)
        yield p + "mlp.down_proj.weight", (d, i)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (v, d)


def write_shard(path, tensors, dtype_name):
    header, offset = {}, 0
    for name, t in tensors:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": dtype_name, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in tensors:
            bits = t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)
            f.write(bits.numpy().tobytes())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--geometry", choices=sorted(GEOMETRIES), default="tinyllama-1.1b")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--shard-mib", type=int, default=1024, help="largest shard size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    g = GEOMETRIES[args.geometry]
    dtype, dtype_name = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                  max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                  initializer_range=0.02, torch_dtype=args.dtype, bos_token_id=1, eos_token_id=2, **g)
    shapes = list(tensor_shapes(g))
    limit = args.shard_mib << 20
    shards, current, size = [], [], 0
    for name, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        n *= torch.tensor([], dtype=dtype).element_size()
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = []
        for name, shape in shard:
            t = torch.ones(shape) if name.endswith("norm.weight") else torch.randn(shape) * 0.02
            tensors.append((name, t.to(dtype)))
            weight_map[name] = file
            total += tensors[-1][1].numel() * tensors[-1][1].element_size()
        write_shard(os.path.join(args.out, file), tensors, dtype_name)
        print(f"wrote {file} ({len(shard)} tensors)")
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{args.out}: {sum(len(s) for s in shards)} tensors, {total / 2**30:.2f} GiB in {len(shards)} shards")


if __name__ == "__main__":
    main()
