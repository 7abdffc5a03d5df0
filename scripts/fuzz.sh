#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz/) with AddressSanitizer in build-fuzz/ and runs each for
# SECONDS (default 60) with a seed corpus from the fixtures and the format dictionary. A crash,
# a leak, an input slower than 1 s or an out-of-memory stops that harness and leaves the input
# in build-fuzz/findings/<harness>/. Usage: scripts/fuzz.sh [SECONDS] [harness ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -eq 0 ] && harnesses=(safetensors method_config model_config tokenizer gpt2_vocab run_config jsonl)

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DPEFT_SANITIZE=address \
      -DPEFT_BUILD_FUZZERS=ON -DPEFT_BUILD_TESTS=OFF -DPEFT_BUILD_TOOLS=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" >/dev/null

seed() {  # seed <harness> <files...>
  local dir="build-fuzz/corpus/$1"
  mkdir -p "$dir"
  shift
  for f in "$@"; do cp "$f" "$dir/$(echo "$f" | tr '/' '_')"; done
}
seed safetensors tests/fixtures/hf/adapters/*/adapter/adapter_model.safetensors
seed method_config tests/fixtures/hf/adapters/*/adapter/adapter_config.json
seed model_config tests/fixtures/hf/models/*/config.json examples/models/*/config.json
seed run_config configs/*.json
mkdir -p build-fuzz/corpus/jsonl && head -n 3 examples/data/spam/train.jsonl | cut -c1-400 > build-fuzz/corpus/jsonl/spam.jsonl
# Small tokenizers cut from the bundled ones (whole files would slow every run).
/usr/bin/python3 - <<'PY'
import json, os
os.makedirs("build-fuzz/corpus/tokenizer", exist_ok=True)
t = json.load(open("examples/models/tiny-gpt2-en/tokenizer.json"))
vocab = dict(list(t["model"]["vocab"].items())[:300])
merges = [m for m in t["model"]["merges"] if all(p in vocab for p in (m.split(" ") if isinstance(m, str) else m))][:200]
t["model"]["vocab"], t["model"]["merges"] = vocab, merges
json.dump(t, open("build-fuzz/corpus/tokenizer/tiny.json", "w"))
os.makedirs("build-fuzz/corpus/gpt2_vocab", exist_ok=True)
v = dict(list(json.load(open("tests/fixtures/tokenizers/gpt2/vocab.json")).items())[:300])
lines = open("tests/fixtures/tokenizers/gpt2/merges.txt", encoding="utf-8").read().splitlines()
m = [l for l in lines[1:] if all(p in v for p in l.split(" "))][:200]
open("build-fuzz/corpus/gpt2_vocab/gpt2", "wb").write(json.dumps(v).encode() + b"\0" + ("\n".join([lines[0]] + m)).encode())
PY

for h in "${harnesses[@]}"; do
  mkdir -p "build-fuzz/findings/$h"
  echo "== $h ($seconds s)"
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 "build-fuzz/fuzz_$h" "build-fuzz/corpus/$h" \
      -dict=tests/fuzz/json.dict -max_total_time="$seconds" -timeout=1 -rss_limit_mb=3072 -max_len=65536 \
      -artifact_prefix="build-fuzz/findings/$h/" -print_final_stats=1 2>&1 |
      grep -aE "^#[0-9]+\s*DONE|stat::number_of_executed_units|stat::peak_rss|cov: |ERROR|SUMMARY|Test unit written" | tail -5
done
