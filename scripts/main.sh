#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default target.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec taps-ray generate --chat --check-lossless --max-new-tokens 64 \
  --prompt "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?" "$@"
