#!/usr/bin/env python3
"""One LoRA training step (r=16 on q,k,v,o,gate,up,down) of a billion-parameter Llama on CPU:
peak memory and step time for a float32 base, a bfloat16 base, and a bfloat16 base with
activation checkpointing, each in peft.cpp (peft-bench on a model directory, loaded through mmap)
and in plain PyTorch (bench/torch_reference.py, torch.utils.checkpoint), side by side in one run.

  /usr/bin/python3 scripts/make_random_llama.py --geometry tinyllama-1.1b --out runs/random-tinyllama
  /usr/bin/python3 scripts/bench_llama_scale.py --model runs/random-tinyllama --out runs/llama_scale.jsonl

Prints a Markdown table (the README's) and writes every measurement as JSON lines to --out.
"""
import argparse
import json
import os
import subprocess
import sys

from blas_kernel import with_blas_kernel

CASES = [("float32", False), ("bfloat16", False), ("bfloat16", True)]


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Llama model directory (make_random_llama.py)")
    ap.add_argument("--bench", default=os.path.join(root, "build", "peft-bench"))
    ap.add_argument("--reference", default=os.path.join(root, "bench", "torch_reference.py"))
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-reference", action="store_true", help="peft.cpp only")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    env = with_blas_kernel(dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    with open(os.path.join(args.model, "config.json")) as f:
        c = json.load(f)
    rows = []
    for dtype, ckpt in CASES:
        cmd = [args.bench, "--model", args.model, "--methods", "lora_all", "--dtype", dtype, "--seq", str(args.seq),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)] + (["--checkpointing"] if ckpt else [])
        cpp = run(cmd, env)
        row = {"dtype": dtype, "checkpointing": ckpt, "cpp": cpp}
        if not args.no_reference:
            ref = [args.python, args.reference, "--family", "llama", "--method", "lora_all", "--rank", "16",
                   "--dtype", dtype, "--layers", str(c["num_hidden_layers"]), "--dim", str(c["hidden_size"]),
                   "--heads", str(c["num_attention_heads"]), "--kv-heads", str(c["num_key_value_heads"]),
                   "--intermediate", str(c["intermediate_size"]), "--vocab", str(c["vocab_size"]),
                   "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)] + (["--checkpointing"] if ckpt else [])
            row["torch"] = run(ref, env)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    gib = lambda mib: mib / 1024.0
    ckpt_peak = next(r for r in rows if r["checkpointing"])["cpp"]["peak_rss_mib"]
    plain_peak = next(r for r in rows if r["dtype"] == "bfloat16" and not r["checkpointing"])["cpp"]["peak_rss_mib"]
    print(f"| base | checkpointing | peft.cpp peak RSS GiB | step s | PyTorch peak RSS GiB | step s | memory / time vs PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["cpp"]
        line = f"| {r['dtype']} | {'yes' if r['checkpointing'] else 'no'} | {gib(p['peak_rss_mib']):.2f} | {p['step_ms'] / 1e3:.1f} |"
        if "torch" in r:
            t = r["torch"]
            line += (f" {gib(t['peak_rss_mb']):.2f} | {t['step_s_median']:.1f} | "
                     f"{p['peak_rss_mib'] / t['peak_rss_mb']:.2f}× / {p['step_ms'] / 1e3 / t['step_s_median']:.2f}× |")
        else:
            line += " - | - | - |"
        print(line)
    print(f"\nbf16 + checkpointing / bf16 without: {ckpt_peak / plain_peak:.2f}× peak RSS")


if __name__ == "__main__":
    main()
