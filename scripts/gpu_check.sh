#!/usr/bin/env bash
# The GPU check, in one command, on a CUDA machine with a Python PyTorch (and, optionally,
# transformers + peft): builds this project against that PyTorch's LibTorch, runs every *_CUDA
# test and the CPU suite on LibTorch 2.x (fused attention on), benchmarks a bf16 LoRA step
# (r=16 on every projection) on the TinyLlama-1.1B and Llama-8B geometries with and without
# activation checkpointing — peft-bench and HF transformers + peft side by side — then the same
# step on an NF4 (double-quantized) base beside the bf16 one for the 8B geometry (peak memory,
# tokens/s), and writes one JSON report: $OUT/gpu_report.json (or build-gpu/gpu_report.json).
#
# fmt, nlohmann_json, CLI11 and GoogleTest come from a folder made by scripts/gather_deps.sh on a
# machine with Debian's packages (default: build-deps; carry it along with the working tree).
#   scripts/gather_deps.sh build-deps        # here
#   scripts/gpu_check.sh                     # there
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEPS="${PEFT_DEPS_DIR:-$PWD/build-deps}"
BUILD="${BUILD_DIR:-build-gpu}"
REPORT_DIR="${OUT:-$BUILD}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$BUILD" "$REPORT_DIR"
LOG="$REPORT_DIR/gpu_check.log"
: > "$LOG"
parts="$BUILD/report_parts"
rm -rf "$parts" && mkdir -p "$parts"
t0=$(date +%s)
note() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$LOG" >&2; }

# ---- environment --------------------------------------------------------------
"$PY" - > "$parts/env.json" <<'PYEOF'
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cmake_prefix_path": torch.utils.cmake_prefix_path,
        "cxx11_abi": torch.compiled_with_cxx11_abi()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
for mod in ("transformers", "peft"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:  # reported, not fatal: the HF side is skipped
        info[mod] = None
print(json.dumps(info))
PYEOF
note "environment: $(cat "$parts/env.json")"
prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
[[ -d "$DEPS/include/fmt" && -d "$DEPS/googletest" ]] || { note "missing $DEPS (run scripts/gather_deps.sh where the Debian packages are)"; }

# ---- build ----------------------------------------------------------------------
cuda_args=()
if ! command -v nvcc > /dev/null; then
  # LibTorch's CMake files look for a CUDA toolkit; pip's nvidia packages may hold one.
  nv=$("$PY" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
  for d in "$nv"/nvidia/cuda_nvcc "$nv"/nvidia/cu13 "$nv"/nvidia/cuda_runtime; do
    [[ -x "$d/bin/nvcc" ]] && { cuda_args=(-DCUDAToolkit_ROOT="$d" -DCMAKE_CUDA_COMPILER="$d/bin/nvcc"); break; }
  done
fi
build_ok=false
cxx=$(command -v clang++ || command -v g++)
note "configure (LibTorch from $prefix, compiler $cxx)"
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" \
     -DCMAKE_PREFIX_PATH="$prefix" -DPEFT_DEPS_DIR="$DEPS" "${cuda_args[@]}" >> "$LOG" 2>&1 &&
   cmake --build "$BUILD" -j "$JOBS" --target peft_tests peft-bench >> "$LOG" 2>&1; then
  build_ok=true
fi
note "build ok: $build_ok"
echo "{\"build_ok\": $build_ok, \"seconds\": $(( $(date +%s) - t0 ))}" > "$parts/build.json"

# ---- tests ----------------------------------------------------------------------
gtest_summary() {  # a gtest JSON report -> {"tests", "failures", "failed": [names]}
  "$PY" -c 'import json,sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(json.dumps({"error": str(e)})); sys.exit()
failed = [s["name"] + "." + t["name"] for s in r["testsuites"] for t in s["testsuite"] if t.get("failures")]
print(json.dumps({"tests": r["tests"], "failures": r["failures"], "failed": failed[:50]}))' "$1"
}
if $build_ok; then
  note "CUDA tests"
  timeout 300 "$BUILD/peft_tests" --gtest_filter='*_CUDA*' --gtest_output=json:"$parts/cuda_tests_raw.json" >> "$LOG" 2>&1
  gtest_summary "$parts/cuda_tests_raw.json" > "$parts/cuda_tests.json"
  note "CUDA tests: $(cat "$parts/cuda_tests.json")"
  note "CPU suite on this LibTorch (fused attention path)"
  timeout 240 "$BUILD/peft_tests" --gtest_filter='-*_CUDA*:Tools.*:Cli*' --gtest_output=json:"$parts/cpu_tests_raw.json" >> "$LOG" 2>&1
  gtest_summary "$parts/cpu_tests_raw.json" > "$parts/cpu_tests.json"
  note "CPU tests: $(cat "$parts/cpu_tests.json")"
fi

# ---- benchmarks -----------------------------------------------------------------
tiny="--layers 22 --hidden 2048 --heads 32 --kv-heads 4 --intermediate 5632 --vocab 32000 --seq 512 --batch 8"
big="--layers 32 --hidden 4096 --heads 32 --kv-heads 8 --intermediate 14336 --vocab 128256 --seq 512 --batch 4"
: > "$parts/bench.jsonl"
for geometry in tiny big; do
  args=${!geometry}
  for ckpt in "" "--checkpointing"; do
    if $build_ok; then
      note "peft-bench $geometry $ckpt"
      row=$(timeout 240 "$BUILD/peft-bench" --family llama $args --device cuda --dtype bfloat16 --methods lora_all \
              --steps 3 --warmup 1 $ckpt 2>> "$LOG" | grep '^{' | tail -1)
      echo "{\"impl\": \"peft.cpp\", \"geometry\": \"$geometry\", \"checkpointing\": $([[ -n $ckpt ]] && echo true || echo false), \"result\": ${row:-null}}" >> "$parts/bench.jsonl"
    fi
    if "$PY" -c 'import transformers, peft' 2> /dev/null; then
      note "HF transformers + peft $geometry $ckpt"
      row=$(timeout 240 "$PY" bench/hf_reference.py $args --steps 3 --warmup 1 $ckpt 2>> "$LOG" | grep '^{' | tail -1)
      echo "{\"impl\": \"hf\", \"geometry\": \"$geometry\", \"checkpointing\": $([[ -n $ckpt ]] && echo true || echo false), \"result\": ${row:-null}}" >> "$parts/bench.jsonl"
    fi
  done
done

# Quantized bases (QLoRA): NF4 with double quantization and int8 beside the bf16 base, 8B geometry,
# checkpointing on, in one peft-bench run (rows carry cuda_peak_mib, tokens_per_s, quantized_weights).
if $build_ok; then
  note "peft-bench big --quant none,nf4,int8 --double-quant --checkpointing"
  timeout 300 "$BUILD/peft-bench" --family llama $big --device cuda --dtype bfloat16 --methods lora_all \
    --steps 3 --warmup 1 --checkpointing --quant none,nf4,int8 --double-quant 2>> "$LOG" | grep '^{' |
    while read -r row; do
      echo "{\"impl\": \"peft.cpp\", \"geometry\": \"big\", \"checkpointing\": true, \"quantized\": true, \"result\": $row}" >> "$parts/bench.jsonl"
    done
fi

# Decoding: 256 greedy tokens on the GPT-2-small geometry with the key/value cache, without it and
# merged (rows carry cached_tokens_per_s, uncached_tokens_per_s, cache_speedup).
if $build_ok; then
  for b in 1 8; do
    note "peft-bench gpt2-small --generate 256 --batch $b"
    timeout 120 "$BUILD/peft-bench" --family gpt2 --layers 12 --hidden 768 --heads 12 --vocab 50257 --seq 16 \
      --batch "$b" --generate 256 --methods lora --device cuda 2>> "$LOG" | grep '^{' |
      while read -r row; do
        echo "{\"impl\": \"peft.cpp\", \"geometry\": \"gpt2-small\", \"generate\": true, \"result\": $row}" >> "$parts/bench.jsonl"
      done
  done
fi

# Data parallelism on NCCL: LoRA on the bundled tiny GPT-2 (SOTU, global batch 16), 1 GPU against
# `peft-train --nproc 2` on 2 GPUs; skipped where fewer than 2 GPUs are visible.
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
if $build_ok && [ "${gpus:-0}" -ge 2 ]; then
  for n in 1 2; do
    note "peft-train LoRA on cuda, --nproc $n (nccl)"
    out="$BUILD/dp$n"
    timeout 180 "$BUILD/peft-train" --config configs/sotu_prompt_methods.json --overwrite --nproc "$n" \
      --set 'method={"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"target_modules":["c_attn","c_fc"],"fan_in_fan_out":true}' \
      --set device=cuda --set trainer.max_steps=60 --set trainer.eval_every=0 --set trainer.log_every=10 \
      --set trainer.warmup_steps=0 --set "output_dir=$out" >> "$LOG" 2>&1
    row=$(grep tokens_per_s "$out/log.jsonl" 2>/dev/null | tail -1)
    echo "{\"impl\": \"peft.cpp\", \"data_parallel\": $n, \"backend\": \"nccl\", \"result\": ${row:-null}}" >> "$parts/bench.jsonl"
  done
else
  note "data parallel on NCCL: skipped (${gpus:-0} GPU visible, 2 needed)"
fi

# ---- report ---------------------------------------------------------------------
"$PY" - "$parts" "$REPORT_DIR/gpu_report.json" "$(( $(date +%s) - t0 ))" <<'PYEOF'
import json, os, sys
parts, out, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(name):
    p = os.path.join(parts, name)
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
bench = [json.loads(l) for l in open(os.path.join(parts, "bench.jsonl")) if l.strip()] if os.path.exists(os.path.join(parts, "bench.jsonl")) else []
report = {"seconds": seconds, "environment": load("env.json"), "build": load("build.json"),
          "cuda_tests": load("cuda_tests.json"), "cpu_tests": load("cpu_tests.json"), "bench": bench}
json.dump(report, open(out, "w"), indent=1)
print(json.dumps(report, indent=1))
PYEOF
note "report: $REPORT_DIR/gpu_report.json"
