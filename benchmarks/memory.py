"""Benchmark 5: ``kisstore analyze`` time and the peak memory of extraction and analysis.

Both run as the real command line in child processes; each child reports its own peak
resident set (``VmHWM`` of ``/proc/self/status``) as it exits.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result

# issue #22 item 2: extraction's peak memory near the size of the arrays it holds and produces
EXTRACT_RSS_TARGET = 1.3

# The child reports its own peak RSS (VmHWM) at exit: the kernel's ru_maxrss for a child also
# counts the parent's pages it shared between fork and exec, so it would read the parent's size.
_CHILD = """
import atexit, sys
def _report():
    with open("/proc/self/status") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print("KISSTORE_BENCH_VMHWM_KIB", kib, flush=True)
atexit.register(_report)
sys.argv = ["kisstore", *sys.argv[1:]]
from kisstore_cli.main import main
main()
"""


def run_child(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the ``kisstore`` command line with ARGS in a child process; return wall seconds,
    its peak RSS in bytes (the child's own VmHWM), exit code and output."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=full_env)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    found = re.search(r"KISSTORE_BENCH_VMHWM_KIB (\d+)", text)
    return {"wall_s": wall, "peak_rss": int(found.group(1)) * 1024 if found else float("nan"), "rc": proc.returncode,
            "output": text}


def run(*, device: str, n_items: int, corpus_tokens: int, progress=print) -> list[Result]:
    """Extract a store (128 items × every layer, embedded corpus) and analyse it, in child processes."""
    mib = 2**20
    with tempfile.TemporaryDirectory(prefix="kisstore-bench-") as tmp:
        store = str(Path(tmp) / "bench.zarr")
        ext = run_child(["extract", "--model", "smollm2-135m", "--store", store, "--n-items", str(n_items),
                         "--corpus", "embedded", "--corpus-tokens", str(corpus_tokens), "--device", device,
                         "--quiet"])
        if ext["rc"] != 0:
            raise RuntimeError(f"kisstore extract failed ({ext['rc']}):\n{ext['output'][-2000:]}")
        progress(f"  extract: {ext['wall_s']:.0f} s, peak RSS {ext['peak_rss'] / mib:.0f} MiB")
        ridge = "0"
        ana = run_child(["analyze", store, "--ridge", ridge])
        if ana["rc"] != 0 and "ridge" in ana["output"]:  # too few corpus tokens for an invertible C
            ridge = "1e-3"
            ana = run_child(["analyze", store, "--ridge", ridge])
        if ana["rc"] != 0:
            raise RuntimeError(f"kisstore analyze failed ({ana['rc']}):\n{ana['output'][-2000:]}")
        own = re.search(r"analysed \d+ model\(s\) in ([0-9.]+) s", ana["output"])
        progress(f"  analyze: {ana['wall_s']:.1f} s (command's own timer {own.group(1) if own else '?'} s), "
                 f"peak RSS {ana['peak_rss'] / mib:.0f} MiB")
        import xarray as xr

        tree = xr.open_datatree(store, engine="zarr")
        model = tree["models/smollm2-135m"]
        n_layers, d = model.sizes["layer"], model.sizes["d_ff"]
        keys_b = model["key"].dtype.itemsize * model["key"].size
        cov_b = model["cov"].dtype.itemsize * model["cov"].size
        analysis = tree["analysis/smollm2-135m"]
        out_b = sum(v.dtype.itemsize * v.size for v in analysis.data_vars.values())
        params_b = int(model.attrs.get("n_params", 0)) * 4
        store_b = sum(p.stat().st_size for p in Path(store).rglob("*") if p.is_file())
    shape = f"{n_items} items × {n_layers} layers, d_ff {d}"
    return [
        Result("analyze_s", f"kisstore analyze, {shape} (whole command, Python start-up included)",
               ana["wall_s"], 10.0, "lower", "s",
               {"command_own_timer_s": float(own.group(1)) if own else None, "ridge": float(ridge),
                "peak_rss_mib": ana["peak_rss"] / mib, "inputs_mib": (keys_b + cov_b) / mib,
                "outputs_mib": out_b / mib}),
        Result("extract_rss", f"Peak RSS of kisstore extract ÷ (weights + keys + float64 cov), {shape}",
               ext["peak_rss"] / (params_b + keys_b + cov_b), EXTRACT_RSS_TARGET, "lower", "×",
               {"peak_rss_mib": ext["peak_rss"] / mib, "weights_mib": params_b / mib, "keys_mib": keys_b / mib,
                "cov_mib": cov_b / mib, "wall_s": ext["wall_s"], "corpus_tokens": corpus_tokens,
                "store_on_disk_mib": store_b / mib}),
        Result("analyze_rss", f"Peak RSS of kisstore analyze ÷ (its inputs + outputs), {shape}",
               ana["peak_rss"] / (keys_b + cov_b + out_b), None, "lower", "×",
               {"peak_rss_mib": ana["peak_rss"] / mib, "inputs_mib": (keys_b + cov_b) / mib,
                "outputs_mib": out_b / mib}),
    ]
