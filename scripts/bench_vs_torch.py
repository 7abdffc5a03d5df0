#!/usr/bin/env python3
"""Training-step time of peft.cpp against plain PyTorch, side by side in one run.

Runs `peft-bench` (C++) and `bench/torch_reference.py` (the same model and methods in Python on
Debian's python3-torch) alternately, method by method, in the same environment (threads,
OMP_NUM_THREADS, OPENBLAS_CORETYPE, libblas.so.3), and prints the median step of each side and
the ratio C++ / Python. JSON lines with every measurement go to --out.

  scripts/bench_vs_torch.py --layers 4 --hidden 256 --heads 4 --seq 128 --batch 8 --threads 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from blas_kernel import with_blas_kernel

# peft-bench preset -> torch_reference.py --method
METHODS = {"full": "full", "lora": "lora", "adapter": "adapter", "prefix_tuning": "prefix",
           "prompt_tuning": "prompt", "ia3": "ia3", "bitfit": "bitfit"}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default=os.path.join(root, "build", "peft-bench"))
    ap.add_argument("--reference", default=os.path.join(root, "bench", "torch_reference.py"))
    ap.add_argument("--python", default="/usr/bin/python3", help="a python3 with torch (Debian: python3-torch)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating rounds per method")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="", help="JSON lines of every measurement")
    a = ap.parse_args()

    env = with_blas_kernel(dict(os.environ, OMP_NUM_THREADS=str(a.threads)))  # the Python side must match peft-bench
    geometry = ["--layers", str(a.layers), "--heads", str(a.heads), "--vocab", str(a.vocab), "--seq", str(a.seq),
                "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    rows, out = [], open(a.out, "w") if a.out else None
    for method in a.methods.split(","):
        if method not in METHODS:
            sys.exit(f"--methods: unknown method '{method}' (known: {', '.join(METHODS)})")
        cpp, py = [], []
        for r in range(a.repeats):
            runs = [("cpp", [a.bench, "--methods", method, "--hidden", str(a.hidden)] + geometry),
                    ("python", [a.python, a.reference, "--method", METHODS[method], "--dim", str(a.hidden)] + geometry)]
            for side, cmd in (runs if r % 2 == 0 else runs[::-1]):
                text = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                rec = json.loads([line for line in text.splitlines() if line.startswith("{")][-1])
                ms = rec["step_ms"] if side == "cpp" else 1000.0 * rec["step_s_median"]
                (cpp if side == "cpp" else py).append(ms)
                if out:
                    out.write(json.dumps({"side": side, "round": r, **rec}) + "\n")
        row = (method, statistics.median(cpp), statistics.median(py))
        rows.append(row)
        print(f"{method:<14} C++ {row[1]:9.1f} ms   Python {row[2]:9.1f} ms   ratio {row[1] / row[2]:.2f}", flush=True)
    if out:
        out.close()


if __name__ == "__main__":
    main()
