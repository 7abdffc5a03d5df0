#!/usr/bin/env bash
# Data-parallel speed, side by side in one run: the same LoRA training (SOTU text, global batch 8,
# block 128) as 1 process with 1 thread and as `peft-train --nproc 2` with 1 thread per rank, on
# the bundled tiny GPT-2 and on a 4 x 256 GPT-2 of the same vocabulary (random weights). Prints one
# JSON line per geometry: tokens/s of each, their ratio, and the all-reduce's share of rank 0's
# training time.
#   scripts/dp_speed.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-40}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The 4 x 256 geometry: the tiny model's tokenizer and vocabulary, wider and freshly initialised.
mkdir -p "$work/gpt2-4x256"
cp examples/models/tiny-gpt2-en/tokenizer* "$work/gpt2-4x256/" 2>/dev/null || true
python3 - "$work/gpt2-4x256/config.json" <<'PY'
import json, sys
c = json.load(open("examples/models/tiny-gpt2-en/config.json"))
c.update(n_layer=4, n_embd=256, n_head=4, n_inner=1024)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY

run() {  # geometry-dir init out-dir launcher-flags...
  local model="$1" init="$2" out="$3"
  shift 3
  build/peft-train --config configs/sotu_prompt_methods.json --overwrite "$@" \
    --set "model=$model" --set "init=$init" \
    --set 'method={"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"lora_alpha":16,"target_modules":["c_attn","c_fc"],"fan_in_fan_out":true}' \
    --set "trainer.max_steps=$steps" --set trainer.batch_size=8 --set data.block_size=128 --set trainer.eval_every=0 \
    --set trainer.log_every=5 --set trainer.warmup_steps=0 --set "output_dir=$out" >"$out.log" 2>&1 ||
    { cat "$out.log" >&2; exit 1; }
}

for geometry in tiny 4x256; do
  if [ "$geometry" = tiny ]; then model=examples/models/tiny-gpt2-en init=pretrained; else model="$work/gpt2-4x256" init=config; fi
  run "$model" "$init" "$work/one-$geometry" --threads 1
  run "$model" "$init" "$work/two-$geometry" --nproc 2 --threads 1
  python3 - "$geometry" "$work/one-$geometry" "$work/two-$geometry" <<'PY'
import json, re, sys
geometry, one, two = sys.argv[1:]
def last(d):
    rows = [json.loads(l) for l in open(d + "/log.jsonl") if '"tokens_per_s"' in l]
    return rows
a, b = last(one), last(two)
comm = float(re.search(r"communication ([0-9.]+) s", open(two + ".log").read()).group(1))
train_s = b[-1]["elapsed_s"]
print(json.dumps({"geometry": geometry, "steps": a[-1]["step"],
                  "one_process_tokens_per_s": a[-1]["tokens_per_s"], "two_ranks_tokens_per_s": b[-1]["tokens_per_s"],
                  "ratio": b[-1]["tokens_per_s"] / a[-1]["tokens_per_s"],
                  "one_step_ms": a[-1]["step_ms"], "two_step_ms": b[-1]["step_ms"],
                  "allreduce_share_of_rank0_training": comm / train_s}))
PY
done
