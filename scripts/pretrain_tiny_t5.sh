#!/usr/bin/env bash
# Pretrains examples/models/tiny-t5-en from scratch with T5's span corruption on the bundled
# English text, reusing tiny-gpt2-en's tokenizer (32 sentinel ids are added after its 4,000
# tokens). Corpus: the Brown sample's training texts, Moby Dick's and the State of the Union
# sample's training splits; held out: Moby Dick's and the SOTU sample's test splits.
#   usage: scripts/pretrain_tiny_t5.sh [extra peft-train --set overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/t5-pretrain
mkdir -p "$work/init" data/t5-pretrain
/usr/bin/python3 - <<'PY'
import json
with open("data/t5-pretrain/corpus.txt", "w", encoding="utf-8") as out:
    for line in open("examples/data/brown/train.jsonl", encoding="utf-8"):
        out.write(json.loads(line)["text"] + "\n\n")
    for name in ("mobydick", "sotu"):
        out.write(open(f"examples/data/{name}/train.txt", encoding="utf-8").read().rstrip("\n") + "\n\n")
with open("data/t5-pretrain/heldout.txt", "w", encoding="utf-8") as out:
    for name in ("mobydick", "sotu"):
        out.write(open(f"examples/data/{name}/test.txt", encoding="utf-8").read().rstrip("\n") + "\n\n")
PY
cp examples/models/tiny-t5-en/config.json "$work/init/config.json"
cp examples/models/tiny-gpt2-en/tokenizer.json examples/models/tiny-gpt2-en/tokenizer_config.json "$work/init/"
build/peft-train --config configs/pretrain_tiny_t5.json "$@"
cp "$work/final/model.safetensors" examples/models/tiny-t5-en/model.safetensors
cp examples/models/tiny-gpt2-en/tokenizer.json examples/models/tiny-gpt2-en/tokenizer_config.json examples/models/tiny-t5-en/
