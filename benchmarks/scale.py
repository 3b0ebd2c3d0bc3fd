"""Benchmark 6: a scale plan for the paper's eleven models on one H100 80 GB (and K of them).

Arithmetic from published shapes, kisstore's own memory rule (``layer_groups``: 8·d(d+1)/2 bytes
per layer — the packed float64 lower triangle — plus one bounded float32 staging product per pass,
within 70 % of the memory free after the weights) and the efficiency measured in this run. Assumptions are listed in ``ASSUMPTIONS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spec:
    """Published shapes of one model (HF configs): layers, widths, parameters, vocabulary."""

    name: str
    n_layers: int
    d_model: int
    d_ff: int
    params: float
    vocab: int
    tied: bool = False  # GPT-2 ties its LM head to the embedding


PAPER_MODELS = (
    Spec("GPT-2 Small", 12, 768, 3072, 124e6, 50257, True),
    Spec("GPT-2 Medium", 24, 1024, 4096, 355e6, 50257, True),
    Spec("GPT-2 Large", 36, 1280, 5120, 774e6, 50257, True),
    Spec("GPT-J 6B", 28, 4096, 16384, 6.05e9, 50400),
    Spec("Pythia 1B", 16, 2048, 8192, 1.01e9, 50304),
    Spec("Pythia 2.8B", 32, 2560, 10240, 2.78e9, 50304),
    Spec("Pythia 6.9B", 32, 4096, 16384, 6.86e9, 50304),
    Spec("Llama-2 7B", 32, 4096, 11008, 6.74e9, 32000),
    Spec("Llama-2 13B", 40, 5120, 13824, 13.0e9, 32000),
    Spec("Llama-3 8B", 32, 4096, 14336, 8.03e9, 128256),
    Spec("Llama-3.1 8B", 32, 4096, 14336, 8.03e9, 128256),
)

H100_MEMORY = 79.6 * 2**30  # usable bytes of an H100 80 GB HBM3 (81559 MiB reported)
CONTEXT_RESERVE = 2 * 2**30  # CUDA context, allocator slack, activations of a 4096-token batch
H100_GEMM = {"float32": 51e12, "bfloat16": 790e12}  # achievable: ~0.75 × 67 TFLOP/s fp32 peak; bf16 as read on this H100
DOCS = 100_000
TOKENS_PER_DOC = 600
MERGE_BYTES_PER_S = 1e9

ASSUMPTIONS = [
    f"corpus: the paper's {DOCS:,} Wikipedia documents × {TOKENS_PER_DOC} tokens on average after truncation "
    f"at 1024 tokens (an assumption; English Wikipedia articles average several hundred tokens) "
    f"= {DOCS * TOKENS_PER_DOC / 1e6:.0f} M tokens",
    "dtype as kisstore picks it on CUDA: float32 below 3 B parameters, bfloat16 above; accumulation "
    "always float32 products into float64 sums",
    "memory: kisstore's layer_groups rule, 8·d_ff(d_ff+1)/2 bytes per accumulated layer (the packed float64 "
    "lower triangle) and one float32 product in flight (≤ max(4·w², 16 MiB), w the column block's width), "
    "within 70 % of the H100's "
    f"{H100_MEMORY / 2**30:.1f} GiB minus weights and {CONTEXT_RESERVE / 2**30:.0f} GiB reserve; each extra "
    "group is another corpus pass up to its last layer",
    "speed: time per token = (forward FLOPs / G_dtype + accumulation FLOPs / G_float32) / efficiency, "
    "forward = 2·non-embedding parameters + causal attention 2·d_model·(ctx+1) per layer, accumulation "
    "d_ff² per layer (what syrk needs; kisstore's blocked upper-triangle products do 1/2 + 1/(2b) of a full "
    "GEMM, which the measured efficiency already pays for); G = large-GEMM FLOP/s; the efficiency measured "
    "on SmolLM2-135M is assumed to hold for the larger models (conservative: bigger matrices use a GPU better)",
    "sharding over K GPUs: K disjoint document ranges, each its own pass; partial sums merged exactly in "
    f"float64, the merge reading K × the accumulators at {MERGE_BYTES_PER_S / 1e9:.0f} GB/s",
]


def plan(efficiency: float, gemm: dict[str, float] | None = None, shards: int = 8,
         efficiency_source: str = "") -> dict[str, Any]:
    """The table's rows (dicts) and the assumptions behind them."""
    from kisstore.extract.accumulate import layer_bytes
    from kisstore.extract.pipeline import layer_groups

    g = {**H100_GEMM, **(gemm or {})}
    rows = []
    for s in PAPER_MODELS:
        dtype = "float32" if s.params < 3e9 else "bfloat16"
        weights = s.params * (4 if dtype == "float32" else 2)
        budget = int(0.7 * (H100_MEMORY - weights - CONTEXT_RESERVE))
        groups = layer_groups(list(range(s.n_layers)), s.d_ff, budget)
        nonemb = s.params - s.vocab * s.d_model * (1 if s.tied else 2)
        per_layer = nonemb / s.n_layers
        ctx = TOKENS_PER_DOC
        layer_flops = 2 * per_layer + 2 * s.d_model * (ctx + 1)
        fwd = sum(layer_flops * (grp[-1] + 1) for grp in groups)
        acc = float(s.d_ff) ** 2 * s.n_layers
        sec_per_token = (fwd / g[dtype] + acc / g["float32"]) / efficiency
        tps = 1.0 / sec_per_token
        tokens = DOCS * TOKENS_PER_DOC
        hours = tokens / tps / 3600
        acc_bytes = layer_bytes(s.d_ff)
        merge_h = shards * acc_bytes * s.n_layers / MERGE_BYTES_PER_S / 3600
        rows.append({
            "model": s.name, "layers": s.n_layers, "d_ff": s.d_ff, "params_B": s.params / 1e9, "dtype": dtype,
            "acc_per_layer_GiB": acc_bytes / 2**30, "acc_all_layers_GiB": acc_bytes * s.n_layers / 2**30,
            "weights_GiB": weights / 2**30, "passes": len(groups), "layers_per_pass": len(groups[0]),
            "tokens_per_s": tps, "hours_1_gpu": hours, f"hours_{shards}_gpus": hours / shards + merge_h,
        })
    return {"rows": rows, "assumptions": ASSUMPTIONS, "efficiency": efficiency,
            "efficiency_source": efficiency_source, "gemm_flops": g, "shards": shards}
