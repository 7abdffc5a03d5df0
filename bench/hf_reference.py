#!/usr/bin/env python3
"""The same LoRA training step in Hugging Face transformers + peft on CUDA, for side-by-side numbers
with `peft-bench --device cuda` (scripts/gpu_check.sh runs both).

A randomly initialised LlamaForCausalLM of the given geometry in bfloat16 on the GPU, LoRA r=16
(alpha 32) on q,k,v,o,gate,up,down, one AdamW step per timed iteration; optional gradient
checkpointing (non-reentrant). Prints one JSON object: tokens/s, median step seconds, peak CUDA
memory (torch.cuda.max_memory_allocated).
"""
import argparse
import json
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--checkpointing", action="store_true")
    args = ap.parse_args()

    import transformers
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq + 16)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, torch_dtype=torch.bfloat16)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device="cuda")
    torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({
        "impl": "hf-transformers+peft", "transformers": transformers.__version__, "peft": peft.__version__,
        "torch": torch.__version__, "config": vars(args),
        "trainable_params": sum(p.numel() for p in params),
        "step_s_median": med, "tokens_per_s": args.batch * args.seq / med,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }))


if __name__ == "__main__":
    main()
