#!/usr/bin/env bash
# Shared by every experiment's run.sh (sourced from it): repository root, the
# experiment's folder (EXP) and results folder (OUT), the kvsim binary, the real traces (captured when missing) and the replay options.
# Knobs: KVSIM_TRACES (trace folder), KVSIM_RESULTS, KVSIM_MEASURE, KVSIM_THREADS;
# a run.sh may set DEFAULT_MEASURE before sourcing.
EXP_NAME=$(basename "$(cd "$(dirname "$0")" && pwd)")   # the sourcing run.sh's folder
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
EXP=experiments/$EXP_NAME
OUT=${KVSIM_RESULTS:-results}/$EXP_NAME
mkdir -p "$OUT" "$EXP/figures"
start=$(date +%s)
[ -x build/sim/kvsim ] || bash .ci/setup.sh build >/dev/null
KVSIM=build/sim/kvsim
TRACES="${KVSIM_TRACES:-/tmp/large}"       # real traces: <model>_large.h5 (not in git)
ensure_trace() {  # $1 = smollm2 | gemma3-270m; captures the trace when missing (2-3 min each)
  local f="$TRACES/$1_large.h5"
  if [ ! -f "$f" ]; then
    bash trace/capture/install.sh >/dev/null
    python3 trace/capture/kvsim_capture.py --preset large --model "$1" --out "$TRACES" --quiet >&2
  fi
  echo "$f"
}
MEASURE="${KVSIM_MEASURE:-${DEFAULT_MEASURE:---sequences 0 1 2 3 --measure stride=8}} --threads ${KVSIM_THREADS:-2} -q"

# Replays every $EXP/*.cfg on both models into $OUT/<model>_<cfg>.h5; a config
# named name.<model>.cfg runs on that model only.
replay_all_configs() {
  for m in smollm2 gemma3-270m; do
    T=$(ensure_trace $m)
    for cfg in $EXP/*.cfg; do
      c=$(basename "$cfg" .cfg)
      case "$c" in *.*) [ "${c#*.}" = "$m" ] || continue; c=${c%%.*} ;; esac   # name.<model>.cfg: that model only
      $KVSIM replay -t "$T" --config "$cfg" $MEASURE -o "$OUT/${m}_$c.h5"
    done
  done
}

# The usual experiment: every config on both models, then the experiment's plots.
run_standard_experiment() {
  replay_all_configs
  python3 "$EXP/plots.py" "$OUT" "$EXP/figures" "$TRACES"
  finish_experiment
}

finish_experiment() { echo "$EXP_NAME: $(($(date +%s) - start)) s"; }
