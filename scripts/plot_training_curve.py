#!/usr/bin/env python3
"""A training run's curve from its log.jsonl: training loss per logged step and the evaluation's
perplexity, as an SVG and PNG (gnuplot) and a markdown table on stdout.

usage: scripts/plot_training_curve.py RUN/log.jsonl OUT_STEM [--title TITLE]
       (writes OUT_STEM.svg and OUT_STEM.png)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def read_log(path):
    train, evals = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except ValueError as e:
                sys.exit(f"{path}:{n}: not a JSON line ({e})")
            if "eval" in rec and "perplexity" in rec["eval"]:
                evals.append((rec["step"], rec["eval"]["loss"], rec["eval"]["perplexity"]))
            elif "loss" in rec and "step" in rec:
                train.append((rec["step"], rec["loss"]))
    if not train:
        sys.exit(f"{path}: no training steps logged")
    return train, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("out_stem")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    train, evals = read_log(a.log)
    print("| step | training loss | held-out loss | held-out perplexity |")
    print("|---:|---:|---:|---:|")
    by_step = dict(train)
    for step, loss, ppl in evals:
        near = min(by_step, key=lambda s: abs(s - step))  # the logged training loss nearest the evaluation
        print(f"| {step} | {by_step[near]:.3f} | {loss:.3f} | {ppl:.1f} |")
    if shutil.which("gnuplot") is None:
        sys.exit("gnuplot not found (apt-get install gnuplot-nox): no plot written")
    with tempfile.TemporaryDirectory() as tmp:
        t, e = os.path.join(tmp, "train.dat"), os.path.join(tmp, "eval.dat")
        with open(t, "w") as f:
            f.writelines(f"{s} {l}\n" for s, l in train)
        with open(e, "w") as f:
            f.writelines(f"{s} {l}\n" for s, l, _ in evals)
        body = (f"set title '{a.title}'\nset xlabel 'training step'\nset ylabel 'loss (nats per token)'\nset grid\n"
                "set key top right\n"
                f"plot '{t}' using 1:2 with lines lw 1.5 title 'training loss', "
                f"'{e}' using 1:2 with linespoints lw 2 pt 7 title 'held-out loss'\n")
        for term, ext in (("svg size 800,450 font 'sans,11' background rgb 'white'", "svg"),
                          ("pngcairo size 800,450 font 'sans,10'", "png")):
            out = os.path.join(tmp, "curve." + ext)
            subprocess.run(["gnuplot"], input=f"set terminal {term}\nset output '{out}'\n" + body, text=True, check=True)
            os.replace(out, f"{a.out_stem}.{ext}")


if __name__ == "__main__":
    main()
