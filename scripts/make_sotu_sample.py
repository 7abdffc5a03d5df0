#!/usr/bin/env python3
"""Writes examples/data/sotu/{train,test}.txt: the last speeches of the State of the Union
train split (up to 2000) and the first of its test split (from 2001), speeches separated by a
blank line as in the source.

usage: scripts/make_sotu_sample.py <sotu data dir> <out dir> [train_speeches test_speeches]
"""
import sys

src, out = sys.argv[1], sys.argv[2]
counts = {"train": int(sys.argv[3]) if len(sys.argv) > 3 else 8,
          "test": int(sys.argv[4]) if len(sys.argv) > 4 else 3}
for split, n in counts.items():
    with open(f"{src}/{split}.txt", encoding="utf-8") as f:
        speeches = [s.strip() for s in f.read().split("\n\n") if s.strip()]
    chosen = speeches[-n:] if split == "train" else speeches[:n]
    with open(f"{out}/{split}.txt", "w", encoding="utf-8") as g:
        g.write("\n\n".join(chosen) + "\n")
