#!/usr/bin/env python3
"""Writes examples/data/spam/{train,test}.jsonl: the first records of the SpamAssassin sample
(whose record order is already a hash shuffle), text cut to 2,000 characters.

usage: scripts/make_spam_sample.py <spam data dir> <out dir> [train_n test_n]
"""
import json
import sys

src, out = sys.argv[1], sys.argv[2]
counts = {"train": int(sys.argv[3]) if len(sys.argv) > 3 else 1600,
          "test": int(sys.argv[4]) if len(sys.argv) > 4 else 400}
for split, n in counts.items():
    with open(f"{src}/{split}.jsonl", encoding="utf-8") as f, \
         open(f"{out}/{split}.jsonl", "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            r = json.loads(line)
            g.write(json.dumps({"id": r["id"], "label": r["label"], "text": r["text"][:2000]},
                               ensure_ascii=False) + "\n")
