#!/usr/bin/env bash
# Cost of the live mode (docs/closed-loop.md): seconds per (policy, sequence) of
# `python -m kvsim.live` on one ~1k-token passkey prompt with a 64-token continuation and
# 32 generated tokens, per model and torch thread count. The prompts trace is captured once
# per model with layer 0 only (the live mode reads its tokens). `full`'s seconds include the
# prompt pass, which every other policy of the sequence shares. Needs the package installed
# (docs/python.md) and the models (trace/capture/install.sh).
#   bash sim/bench/live_cost.sh [WORKDIR] [POLICIES...]
# Prints a Markdown table (docs/closed-loop.md, "Cost").
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d)}"
shift || true
POLICIES=("${@:-snapkv:ratio=0.5}")
[ $# -eq 0 ] && POLICIES=("snapkv:ratio=0.5" "kivi:bits=2" "minicache+kivi:bits=4")
mkdir -p "$WORK"
args=()
for p in "${POLICIES[@]}"; do args+=(--policy "$p"); done
echo "| model | threads | policy | prompt tokens | seconds |"
echo "|---|---|---|---|---|"
for model in smollm2 gemma3-270m; do
  trace="$WORK/$model.h5"
  [ -f "$trace" ] || "$PYTHON" trace/capture/kvsim_capture.py --model "$model" --prompts passkey \
    --prompt-tokens 1024 --new-tokens 64 --layers 0 --quiet --out "$trace" >/dev/null
  for threads in 1 2; do
    out="$WORK/$model-$threads.h5"
    rm -f "$out"
    "$PYTHON" -m kvsim.live --model "$model" --trace "$trace" "${args[@]}" --sequences 0 \
      --max-new-tokens 32 --threads "$threads" --out "$out" >/dev/null 2>&1
    "$PYTHON" - "$out" "$model" "$threads" <<'PY'
import sys
import kvsim.live
frame = kvsim.live.load_closed_loop(sys.argv[1])
for row in frame.itertuples():
    print(f"| {sys.argv[2]} | {sys.argv[3]} | `{row.run}` | {row.prompt_tokens} | {row.seconds:.1f} |")
PY
  done
done
