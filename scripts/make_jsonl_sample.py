#!/usr/bin/env python3
"""Writes the bundled samples of a prepared JSONL data set: the first records of its train and test
splits (whose record order is already a hash shuffle), keeping the named fields, text cut short.

  scripts/make_jsonl_sample.py <data dir> <out dir> --train N --test N --max-chars C --fields a,b,text

examples/data/spam:  --train 1600 --test 400 --max-chars 2000 --fields id,label,text
examples/data/brown: --train 3000 --test 750 --max-chars 1000 --fields id,doc,label,text
"""
import argparse
import json

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("src")
ap.add_argument("out")
ap.add_argument("--train", type=int, required=True)
ap.add_argument("--test", type=int, required=True)
ap.add_argument("--max-chars", type=int, required=True)
ap.add_argument("--fields", required=True, help="comma-separated, in output order; 'text' is cut")
a = ap.parse_args()
fields = a.fields.split(",")
for split, n in (("train", a.train), ("test", a.test)):
    with open(f"{a.src}/{split}.jsonl", encoding="utf-8") as f, \
         open(f"{a.out}/{split}.jsonl", "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            r = json.loads(line)
            r["text"] = r["text"][:a.max_chars]
            g.write(json.dumps({k: r[k] for k in fields}, ensure_ascii=False) + "\n")
