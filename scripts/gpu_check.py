"""A short CUDA check of extraction, for a lent GPU machine (see docs/benchmarks.md).

Usage: python scripts/gpu_check.py ARCH_DIR OUT_DIR
ARCH_DIR holds a config.json and tokenizer files (e.g. SmolLM2's); weights are drawn at random
(timings and CPU-vs-GPU agreement do not depend on training). Checks that keys and covariances
computed on CUDA equal the CPU path's, and measures the corpus pass's tokens/s on the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from transformers import AutoConfig, AutoModelForCausalLM

from kisstore.extract import ExtractOptions, run_extract

DEV = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # "cpu" for a smoke test of this script


def sync() -> None:
    if DEV.startswith("cuda"):
        torch.cuda.synchronize()


def main(arch: Path, out: Path) -> None:
    work = Path("/tmp/kisstore-gpu")
    shutil.rmtree(work, ignore_errors=True)
    model_dir = work / "smollm2-random"
    shutil.copytree(arch, model_dir)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(arch)).save_pretrained(model_dir)
    report: dict = {"device": torch.cuda.get_device_name(0) if DEV.startswith("cuda") else "cpu",
                    "torch": torch.__version__}
    big_tokens = int(os.environ.get("GPU_CHECK_TOKENS", "90000"))

    def extract(store: Path, device: str, tokens: int, **kw) -> tuple[xr.Dataset, float]:
        t = time.perf_counter()
        run_extract(ExtractOptions(models=[str(model_dir)], store=str(store), corpus="embedded", n_items=64,
                                   corpus_tokens=tokens, device=device, dtype="float32", progress=False,
                                   checkpoint_every=1e9, **kw))
        dt = time.perf_counter() - t
        return xr.open_datatree(store, engine="zarr")["models/smollm2-random"].ds.load(), dt

    cpu, t_cpu = extract(work / "cpu.zarr", "cpu", 4000)
    gpu, t_gpu = extract(work / "gpu.zarr", DEV, 4000)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    report["keys_max_rel_diff_cpu_vs_cuda"] = rel(gpu["key"].values, cpu["key"].values)
    report["cov_max_rel_diff_cpu_vs_cuda"] = rel(gpu["cov"].values, cpu["cov"].values)
    report["n_tokens_equal"] = bool((gpu["n_tokens"].values == cpu["n_tokens"].values).all())
    report["seconds_4k_tokens"] = {"cpu": round(t_cpu, 1), "cuda": round(t_gpu, 1)}

    # throughput: the whole embedded corpus (~100k tokens), all 30 layers, larger batches
    big, t_big = extract(work / "big.zarr", DEV, big_tokens, batch_tokens=16384)
    n = int(big["n_tokens"].values[0])
    report["corpus_pass"] = {"tokens": n, "seconds_total_incl_load_and_write": round(t_big, 1)}
    # the corpus pass alone, timed in-process on the loaded model
    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.covariance import accumulate, corpus_batches
    from kisstore.models.loading import load_model

    lm = load_model(str(model_dir), device=DEV, dtype="float32")
    batches = list(corpus_batches(lm.tokenizer, resolve_corpus("embedded"), max_length=1024, batch_tokens=16384,
                                  token_cap=big_tokens))
    tokens = sum(b.tokens for b in batches)
    body = lm.model.base_model
    for _ in range(2):
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            for b in batches:
                body(input_ids=b.input_ids.to(DEV), attention_mask=b.attention_mask.to(DEV), use_cache=False)
            sync()
            bare = time.perf_counter() - t
        moments = {layer: SecondMoment(lm.d_ff, DEV) for layer in range(lm.n_layers)}
        sync()
        t = time.perf_counter()
        accumulate(lm, list(range(lm.n_layers)), iter(batches), moments)
        sync()
        acc = time.perf_counter() - t
    report["corpus_pass_tokens_per_s"] = {"bare_forward": round(tokens / bare), "with_30_accumulators": round(tokens / acc),
                                   "overhead_ratio": round(acc / bare, 3)}
    size = 8192 if DEV.startswith("cuda") else 1024
    a = torch.randn(size, size, device=DEV)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    report["fp32_gemm_tflops"] = round(10 * 2 * size**3 / (time.perf_counter() - t) / 1e12, 3)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
