#!/usr/bin/env bash
# Pretrains examples/models/gpt2-en-6m from scratch: a 6.9M-parameter GPT-2 (6 layers, width 256,
# 8 heads) with its own 8,000-token SentencePiece BPE tokenizer, on Brown + Moby Dick + the State
# of the Union addresses up to 2000 + GCIDE (scripts/make_pretrain_corpus.py: deduplicated, test
# splits kept out, ~1 % held out for perplexity). An interrupted run (Ctrl-C, a lost session)
# continues from its last saved state when the script is run again.
#   usage: scripts/pretrain_gpt2_en_6m.sh [extra peft-train --set overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
work=runs/pretrain-base
model=examples/models/gpt2-en-6m

[[ -d data/raw/sotu ]] || scripts/fetch_data.sh
[[ -f data/raw/gcide/gcide.txt ]] || scripts/fetch_gcide.sh
[[ -f data/pretrain-base/corpus.txt ]] || /usr/bin/python3 scripts/make_pretrain_corpus.py data/pretrain-base
if [[ ! -f "$work/init/tokenizer.json" ]]; then
  build/peft-tokenizer train --corpus data/pretrain-base/corpus.txt --out "$work/init" --vocab-size 8000
fi
cp configs/models/gpt2-en-6m.json "$work/init/config.json"

resume=()
[[ -d "$work/state" ]] && resume=(--resume)
build/peft-train --config configs/pretrain_gpt2_en_6m.json "${resume[@]}" "$@"

mkdir -p "$model"
cp configs/models/gpt2-en-6m.json "$model/config.json"
cp "$work/final/model.safetensors" "$model/model.safetensors"
cp "$work/init/tokenizer.json" "$work/init/tokenizer_config.json" "$model/"
cp "$work/log.jsonl" "$model/training_log.jsonl"
cp data/pretrain-base/stats.json "$model/corpus_stats.json"
mkdir -p "$model/licenses"
cp data/pretrain-base/licenses/gcide-copyright "$model/licenses/"  # GCIDE is GPL: its terms go with the weights
/usr/bin/python3 scripts/plot_training_curve.py "$work/log.jsonl" "$model/training_curve" \
    --title "gpt2-en-6m: pretraining on Brown, Moby Dick, SOTU (to 2000) and GCIDE"
