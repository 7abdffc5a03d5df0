#!/usr/bin/env python3
"""Side by side: each task's scores on two bases, from two results tables' JSON
(scripts/results_table.py ... --name STEM writes docs/STEM.json).

For each task both tables hold: every method's score and its ratio to full fine-tuning on each
base, and the count of methods reaching 95 % of full fine-tuning with at most 2 % trainable
parameters. Writes markdown on stdout.

usage: scripts/compare_bases.py OLD.json NEW.json [--names old,new] [--plan configs/results/plan.json]
"""
import argparse
import json
import os

from results_table import MAX_TRAINABLE_PCT, NEAR_FULL, near_full  # the table's own criterion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["summary"]


def cell(row, perplexity):
    if row is None:
        return "", ""
    score = f"{row['score']:.2f}" if perplexity else f"{row['score']:.3f}"
    vs = f"{row['vs_full']:.3f}" if "vs_full" in row else ""
    return score, vs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--names", default="old base,new base")
    ap.add_argument("--plan", default=os.path.join(ROOT, "configs", "results", "plan.json"))
    args = ap.parse_args()
    names = args.names.split(",")
    if len(names) != 2:
        raise SystemExit(f"--names: expected two comma-separated names, found '{args.names}'")
    old, new = load(args.old), load(args.new)
    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    out = [f"# {names[0]} against {names[1]}", ""]
    for task in [t for t in old if t in new]:
        by_old = {r["method"]: r for r in old[task]}
        by_new = {r["method"]: r for r in new[task]}
        perplexity = plan["tasks"].get(task, {}).get("metric") == "perplexity"
        out += [f"## {task}", ""]
        if perplexity:
            out += ["Perplexity is per token of each base's own tokenizer, so the two bases' perplexities "
                    "are not comparable with each other; their ratios to full fine-tuning are.", ""]
        out += [f"| method | {names[0]} | vs full | trainable % | {names[1]} | vs full | trainable % |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for method in list(by_old) + [m for m in by_new if m not in by_old]:
            o, n = by_old.get(method), by_new.get(method)
            (os_, ov), (ns, nv) = cell(o, perplexity), cell(n, perplexity)
            op = f"{o['trainable_pct']:.2f}" if o and o.get("trainable_pct") is not None else ""
            np_ = f"{n['trainable_pct']:.2f}" if n and n.get("trainable_pct") is not None else ""
            out.append(f"| {method} | {os_} | {ov} | {op} | {ns} | {nv} | {np_} |")
        count_old = len(near_full(old[task]) or [])
        count_new = len(near_full(new[task]) or [])
        out += ["", f"Methods at ≥ {NEAR_FULL * 100:.0f} % of full fine-tuning with ≤ {MAX_TRAINABLE_PCT:g} % trainable parameters: "
                    f"{count_old} of {len(old[task]) - 1} on the {names[0]}, {count_new} of {len(new[task]) - 1} on the {names[1]}.", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
