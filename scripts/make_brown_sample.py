#!/usr/bin/env python3
"""Writes examples/data/brown/{train,test}.jsonl: the first records of the Brown corpus sample's
splits (whose record order is already a hash shuffle; test documents are disjoint from training
documents), keeping id, doc, the 15-genre label and the paragraph text cut to 1,000 characters.

usage: scripts/make_brown_sample.py <brown data dir> <out dir> [train_n test_n]
"""
import json
import sys

src, out = sys.argv[1], sys.argv[2]
counts = {"train": int(sys.argv[3]) if len(sys.argv) > 3 else 3000,
          "test": int(sys.argv[4]) if len(sys.argv) > 4 else 750}
for split, n in counts.items():
    with open(f"{src}/{split}.jsonl", encoding="utf-8") as f, \
         open(f"{out}/{split}.jsonl", "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            r = json.loads(line)
            g.write(json.dumps({"id": r["id"], "doc": r["doc"], "label": r["label"], "text": r["text"][:1000]},
                               ensure_ascii=False) + "\n")
