#!/usr/bin/env bash
# The seq2seq task of the README: a Brown sentence -> its genre's name, generated as text by the
# bundled tiny T5 (examples/models/tiny-t5-en) with LoRA, (IA)3, LST, S3PET and full fine-tuning. Each method's
# learning rate is chosen by exact match on the validation split (10 % of the training file);
# the chosen run's delta (best/, by validation loss) is then scored once on the test file.
# Prints one JSON line per run and per test score. Arguments: the methods to run (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A rates=([lora]="0.001 0.003 0.01" [ia3]="0.003 0.01 0.03" [lst]="0.001 0.003 0.01" [s3pet]="0.003 0.01 0.03"
                  [full]="0.0003 0.001")
config_of() { [ "$1" = full ] && echo configs/brown_genre_t5_lora.json || echo "configs/brown_genre_t5_$1.json"; }
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(lora ia3 lst s3pet full)
mkdir -p runs/brown-t5
for method in "${methods[@]}"; do
  best_em=-1 best_dir=""
  for lr in ${rates[$method]}; do
    out="runs/brown-t5/$method-$lr"
    sets=(--set "trainer.lr=$lr" --set "output_dir=$out" --set trainer.progress=false)
    [ "$method" = full ] && sets+=(--set 'method="full"')
    config=$(config_of "$method")
    build/peft-train --config "$config" --overwrite "${sets[@]}" > "$out.log" 2>&1 || { cat "$out.log"; exit 1; }
    if [ "$method" = full ]; then model_sets=(--set "model=$out/best" --set tokenizer=examples/models/tiny-t5-en); adapter=(); else model_sets=(); adapter=(--adapter "$out/best"); fi
    val=$(build/peft-eval --config "$config" "${sets[@]}" "${model_sets[@]}" "${adapter[@]}" --split validation --max-new-tokens 8)
    echo "{\"method\": \"$method\", \"lr\": $lr, \"validation\": $val}"
    em=$(echo "$val" | sed 's/.*"exact_match": \([0-9.]*\).*/\1/')
    if awk "BEGIN{exit !($em > $best_em)}"; then best_em=$em best_dir=$out best_lr=$lr; fi
  done
  if [ "$method" = full ]; then model_sets=(--set "model=$best_dir/best" --set tokenizer=examples/models/tiny-t5-en); adapter=(); else model_sets=(); adapter=(--adapter "$best_dir/best"); fi
  config=$(config_of "$method")
  test=$(build/peft-eval --config "$config" "${model_sets[@]}" "${adapter[@]}" --max-new-tokens 8)
  echo "{\"method\": \"$method\", \"lr\": $best_lr, \"test\": $test}"
done
