#!/usr/bin/env bash
# Set up (idempotent), lint, and run the test suite. Extra args go to pytest (e.g. -m slow).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
ruff check taps_ray tests benchmarks
exec python -m pytest -q --durations=20 "$@"
