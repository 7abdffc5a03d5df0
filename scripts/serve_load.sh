#!/usr/bin/env bash
# The peft-serve load test in one command: trains K small LoRA deltas of the bundled tiny GPT-2
# (a few steps each on the SOTU sample, different seeds, so each continues text differently),
# starts peft-serve on a free loopback port with them in --adapter-dir, runs scripts/load_test.py
# (extra arguments go to it), prints the server's /metrics and stops it.
#
#   scripts/serve_load.sh [--deltas K] [--workdir DIR] [--serve-flag FLAG ...] -- [load_test.py args]
#   scripts/serve_load.sh -- --clients 16 --requests 50 --max-tokens 32 --compare-sequential
set -euo pipefail
cd "$(dirname "$0")/.."

deltas=8
workdir=""
serve_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --deltas) deltas="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --serve-flag) serve_flags+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "serve_load.sh: unknown option '$1' (see the comment at the top)" >&2; exit 2 ;;
  esac
done
[ -x build/peft-serve ] || { echo "serve_load.sh: build/peft-serve is missing (run .ci/setup)" >&2; exit 2; }
keep=1  # a --workdir is kept (its deltas are reused by the next run)
if [ -z "$workdir" ]; then
  workdir="$(mktemp -d)"
  keep=""
  trap 'rm -rf "$workdir"' EXIT
fi
mkdir -p "$workdir/deltas"

names=()
for ((k = 0; k < deltas; ++k)); do
  name="task$k"
  names+=("$name")
  [ -f "$workdir/deltas/$name/adapter_model.safetensors" ] && continue
  build/peft-train --config configs/sotu_prompt_methods.json --overwrite \
    --set 'method={"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"lora_alpha":16,"target_modules":["c_attn"],"fan_in_fan_out":true}' \
    --set trainer.max_steps=5 --set trainer.lr=0.05 --set trainer.warmup_steps=0 --set trainer.eval_every=0 \
    --set trainer.batch_size=4 --set "seed=$((100 + k))" --set "output_dir=$workdir/run$k" >"$workdir/train$k.log" 2>&1 ||
    { cat "$workdir/train$k.log" >&2; exit 1; }
  cp -r "$workdir/run$k/final" "$workdir/deltas/$name"
done

log="$workdir/serve.log"
build/peft-serve --model examples/models/tiny-gpt2-en --adapter-dir "$workdir/deltas" --max-loaded "$deltas" \
  --port 0 "${serve_flags[@]}" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; [ -n "$keep" ] || rm -rf "$workdir"' EXIT
port=""
for _ in $(seq 600); do
  port="$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")"
  [ -n "$port" ] && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "serve_load.sh: peft-serve did not start" >&2; cat "$log" >&2; exit 1; }

python3 scripts/load_test.py --port "$port" --server-pid "$server" --adapters "$(IFS=,; echo "${names[*]}")" "$@"
python3 - "$port" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print("\n".join(l for l in text.splitlines() if not l.startswith("#") and "bucket" not in l))
EOF
kill -TERM $server
wait $server
