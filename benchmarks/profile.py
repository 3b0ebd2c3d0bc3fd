"""Where the corpus pass's time goes: torch's profiler over kisstore's pass on a few batches.

Not a benchmark with a target: a breakdown for tuning (``python -m benchmarks --only profile``),
mainly for a short GPU loan, where it tells the next change what to aim at. Kernels are put in
classes by name (matrix products, attention, the accumulators' float64 adds, the rest) and the
full table of the slowest ops is written next to the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# substrings of kernel / op names, checked in this order (lower case)
CLASSES = (
    ("attention", ("attention", "fmha", "flash", "sdpa", "softmax")),
    ("matmul", ("gemm", "matmul", "mm", "linear", "cutlass", "sm90_", "sm80_", "mkldnn", "onednn")),
    ("float64 sums", ("double",)),
)


def classify(name: str) -> str:
    low = name.lower()
    for label, needles in CLASSES:
        if any(n in low for n in needles):
            return label
    return "other"


def run(lm, batches: Sequence, *, device: str, out: Path, top: int = 40, compile: bool = False,
        warmup: Sequence = (), progress=print) -> dict[str, Any]:
    """Profile kisstore's corpus pass (every layer accumulated) over ``batches``; write the
    slowest ops to ``out`` and return the time per class of op, in seconds and shares."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.covariance import accumulate

    cuda = device.startswith("cuda")
    layers = list(range(lm.n_layers))
    moments = {layer: SecondMoment(lm.d_ff, device) for layer in layers}
    for w in [*warmup, batches[0]]:  # warm-up: kernel choice, allocator, compilation
        accumulate(lm, layers, iter([w]), moments, compile=compile)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        accumulate(lm, layers, iter(batches), moments, compile=compile)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    # CUDA: the kernels' own entries (an op's row repeats its kernels' time); CPU: the ops' self
    # time, which excludes nested ops, so nothing counts twice
    per_class: dict[str, float] = {}
    for ev in events:
        if cuda:
            t = float(ev.self_device_time_total) / 1e6 if ev.device_type == DeviceType.CUDA else 0.0
        else:
            t = float(ev.self_cpu_time_total) / 1e6
        if t > 0:
            label = classify(ev.key)
            per_class[label] = per_class.get(label, 0.0) + t
    total = sum(per_class.values())
    tokens = sum(b.tokens for b in batches)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "tokens": tokens, "batches": len(batches), "device_time_s": total,
        "per_class_s": per_class, "per_class_share": {k: v / total for k, v in per_class.items()} if total else {},
        "us_per_token": total / tokens * 1e6 if tokens else float("nan"), "table": str(out),
    }
    lines = [f"kisstore corpus pass, {len(batches)} batches, {tokens} tokens, device {device}"
             + (", decoder layers compiled" if compile else ""),
             f"{'device' if cuda else 'CPU'} time {total:.3f} s = {summary['us_per_token']:.2f} µs per token"]
    lines += [f"  {k:<14} {v:8.3f} s  {v / total:6.1%}" for k, v in sorted(per_class.items(), key=lambda kv: -kv[1])]
    lines += ["", events.table(sort_by=sort, row_limit=top)]
    out.write_text("\n".join(lines) + "\n")
    for line in lines[:2 + len(per_class)]:
        progress(line)
    return summary
