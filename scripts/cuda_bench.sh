#!/usr/bin/env bash
# The CUDA part of `python -m benchmarks`, prepared as one command for a short loan of a GPU
# machine that has torch and transformers but no network (see docs/benchmarks.md, "CUDA").
#
#   bash scripts/cuda_bench.sh OUT_DIR [extra benchmark flags]
#
# 1. Packages the GPU machine lacks (zarr, xarray, dask, ...) are installed from wheels in
#    ./.whl (download them here first: pip download --only-binary=:all: --python-version 3.12
#    --no-deps -d .whl zarr xarray dask ...), into a private folder, not the machine's Python.
# 2. The full benchmark on CUDA (default 8192-token batches); a profile of the corpus pass (time
#    per kind of kernel: matmul, attention, float64 sums, other; profile-cuda.txt); then the
#    corpus-pass benchmarks (1, 3, 4) again at 32768-token batches: how batch size moves
#    overhead and efficiency.
# Results land in OUT_DIR as results-cuda*.json and benchmarks-cuda*.md; copy
# results-cuda.json to benchmarks/ and run `python -m benchmarks --render` to publish it.
# BENCH_DEVICE=cpu runs the same steps on a CPU (a smoke test of this script, with --quick).
set -euo pipefail
out=${1:?usage: bash scripts/cuda_bench.sh OUT_DIR [benchmark flags]}
shift
mkdir -p "$out"
device=${BENCH_DEVICE:-cuda}
site=${BENCH_SITE:-/tmp/kisstore-site}
if ! python -c "import zarr, xarray, dask, jsonschema" 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "missing packages and no wheels in .whl/" >&2; exit 2; }
    python -m pip install --quiet --no-deps --no-index --target "$site" .whl/*.whl
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
python -m benchmarks --device "$device" --only cov,p,scale \
    --json "$out/results-$device.json" --doc "$out/benchmarks-$device.md" "$@"
python -m benchmarks --device "$device" --only profile --profile-out "$out/profile-$device.txt" "$@" \
    || echo "profile failed (CUPTI missing?); going on" >&2
python -m benchmarks --device "$device" --only cov --batch-tokens 32768 \
    --json "$out/results-$device-32k.json" --doc "$out/benchmarks-$device-32k.md" "$@"
