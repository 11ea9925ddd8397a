#!/usr/bin/env bash
# Train the CPU specialists for the default target, then replay them. Resumable: rerun after an
# interruption and finished feature shards, checkpoints and drafters are reused.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
for name in ${TAPS_SPECIALISTS:-math_eagle2 chat_eagle2 math_hass chat_hass}; do
  out="runs/cpu/${name/_/-}"
  if [ -f "$out/drafter/taps.json" ]; then echo "[skip] $out/drafter exists"; continue; fi
  resume=""; [ -d "$out/checkpoints" ] && resume="--resume"
  taps-ray train "experiments/cpu_${name}.yaml" $resume
done
taps-ray replay experiments/cpu_replay.yaml "$@"
