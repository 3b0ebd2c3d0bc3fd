#!/usr/bin/env bash
# The main job on the embedded defaults: SmolLM2-135M, our facts file, Python's bundled docs as corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-demo.zarr}
.venv/bin/kisstore extract --model smollm2-135m --store "$STORE" --corpus embedded \
    --corpus-tokens 25000 --n-items 128 --known-only
.venv/bin/kisstore info "$STORE"
if .venv/bin/kisstore analyze --help >/dev/null 2>&1; then
  .venv/bin/kisstore analyze "$STORE" --items known --report report
fi
