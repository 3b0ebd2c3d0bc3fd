#!/usr/bin/env bash
# The CUDA part of `python -m benchmarks`, prepared as one command for a short loan of a GPU
# machine that has torch and transformers but no network (see docs/benchmarks.md, "CUDA").
#
#   bash scripts/cuda_bench.sh OUT_DIR [extra benchmark flags]
#
# 1. Packages the GPU machine lacks (zarr, xarray, dask, ...) are installed from wheels in
#    ./.whl (download them here first: pip download --only-binary=:all: --python-version 3.12
#    --no-deps -d .whl zarr xarray dask ...), into a private folder, not the machine's Python.
# 2. The corpus-pass benchmarks (1, 3, 4) in quick mode, uncompiled and as `kisstore extract
#    --compile` runs the pass (results-cuda-eager.json, results-cuda-compiled.json), side by side
#    on the same machine.
# 3. The full benchmark with whichever of the two had the better FLOP efficiency
#    (results-cuda.json, benchmarks-cuda.md).
# 4. Side runs, each allowed to fail without stopping the script: a profile of the corpus pass
#    (time per kind of kernel: profile-cuda.txt), and the pass at 32768-token batches
#    (results-cuda-32k.json): how batch size moves the figures.
# Copy results-cuda.json to benchmarks/ and run `python -m benchmarks --render` to publish it.
# BENCH_DEVICE=cpu runs the same steps on a CPU (a smoke test of this script, with --quick).
set -uo pipefail
out=${1:?usage: bash scripts/cuda_bench.sh OUT_DIR [benchmark flags]}
shift
mkdir -p "$out"
device=${BENCH_DEVICE:-cuda}
site=${BENCH_SITE:-/tmp/kisstore-site}
export PYTHONUNBUFFERED=1
if ! python -c "import zarr, xarray, dask, jsonschema" 2>/dev/null; then
    compgen -G ".whl/*.whl" >/dev/null || { echo "missing packages and no wheels in .whl/" >&2; exit 2; }
    python -m pip install --quiet --no-deps --no-index --target "$site" .whl/*.whl || exit 2
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
bench() { python -m benchmarks --device "$device" "$@"; }
side() { "$@" || echo "side run failed (rc $?): $*" >&2; }
summary() {
    python - "$out" <<'PY'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("results-*.json")):
    d = json.loads(f.read_text())
    print(f"{f.name}: {d['command']} ({d['elapsed_s'] / 60:.1f} min)")
    for r in d["results"]:
        print(f"  {r['key']:<24} {r['value']:.4g}")
PY
}
side bench --quick --only cov --json "$out/results-$device-eager.json" "$@"
side bench --quick --only cov --compile --json "$out/results-$device-compiled.json" "$@"
best=$(python - "$out" "$device" <<'PY'
import json, pathlib, sys
eff = {}
for mode in ("eager", "compiled"):
    f = pathlib.Path(sys.argv[1]) / f"results-{sys.argv[2]}-{mode}.json"
    if f.exists():
        eff[mode] = next(r["value"] for r in json.loads(f.read_text())["results"] if r["key"] == "flop_efficiency")
print("--compile" if eff.get("compiled", 0) > eff.get("eager", 0) else "")
PY
)
echo "full run with: ${best:-(uncompiled)}"
rc=0
bench $best --only cov,p,scale --json "$out/results-$device.json" --doc "$out/benchmarks-$device.md" "$@" \
    || { rc=$?; echo "the full benchmark failed (rc $rc)" >&2; }
summary
side bench $best --only profile --profile-out "$out/profile-$device.txt" "$@"
side bench $best --only cov --batch-tokens 32768 --json "$out/results-$device-32k.json" "$@"
summary
exit $rc
