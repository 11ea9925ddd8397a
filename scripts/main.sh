#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the embedded default target: the whole study
# (train specialists, compare strategies, sweep, report). Extra args go to `taps-ray quickstart`
# (e.g. --profile smoke). Ctrl-C, then rerun: it resumes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec taps-ray quickstart --profile default --out runs/quickstart "$@"
