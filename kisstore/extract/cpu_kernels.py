"""oneDNN float32 kernels for the CPU corpus pass.

torch sends a float32 ``matmul``/``linear`` on CPU to MKL. On AMD CPUs MKL takes its AVX2
code path, so an AVX-512 machine (Zen 4/5) runs at half of what it can: on the 2-core EPYC
these benchmarks run on, MKL reaches ~215 GFLOP/s and oneDNN's AVX-512 ``brg_matmul`` ~450.
torch ships oneDNN and reaches it, in *strict* float32 (no bf16/tf32 down-conversion), through
``torch.ops.mkldnn._linear_pointwise`` (``y = x Wᵀ + b``), the op TorchInductor uses for CPU
linears, and its ``.binary`` form (``y = x Wᵀ + other``), which lets a product be added to a
running sum inside the GEMM.

Two uses during the corpus pass, both under ``torch.inference_mode``:

- :func:`onednn_linears` runs the model's float32 ``nn.Linear`` (and GPT-2's ``Conv1D``) layers
  through the op;
- ``SecondMoment`` (``kisstore.extract.accumulate``) accumulates Σ k kᵀ panel by panel with it.

Both are chosen by ``kisstore extract --cpu-kernels auto|onednn|torch``: ``auto`` uses oneDNN
where a probe at first use shows the op present and exact to float32 rounding against float64,
``torch`` keeps torch's own kernels. Results agree to float32 rounding either way
(``tests/test_cpu_kernels.py``); the choice is recorded in the store's provenance.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from kisstore.errors import InputError

CHOICES = ("auto", "onednn", "torch")


@functools.cache
def onednn_available() -> bool:
    """True where torch's oneDNN linear ops exist and compute float32 products exactly enough.

    The probe multiplies small random matrices with both forms of the op and compares them with
    float64 products: a build without oneDNN, or one that would round the inputs to bf16
    (relative error ~1e-3), fails it and the torch kernels are used instead.
    """
    try:
        import torch

        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x = torch.randn(67, 130, generator=g)
        w = torch.randn(96, 130, generator=g)
        b = torch.randn(96, generator=g)
        other = torch.randn(67, 96, generator=g)
        with torch.inference_mode():
            y = op(x, w, b, "none", [], "")
            z = op.binary(x, other, w, None, "add")
        ref = x.double() @ w.double().T
        scale = float(ref.abs().max())
        err_y = float((y.double() - (ref + b.double())).abs().max()) / scale
        err_z = float((z.double() - (ref + other.double())).abs().max()) / scale
        return y.dtype == torch.float32 and err_y < 1e-5 and err_z < 1e-5
    except Exception:  # noqa: BLE001 - any failure (op missing, unsupported build) means: do not use it
        return False


def check_choice(choice: str) -> None:
    if choice not in CHOICES:
        raise InputError(f"unknown --cpu-kernels {choice!r}: use {', '.join(CHOICES)}")


def resolve(choice: str, device: str) -> str:
    """The kernels a run on ``device`` uses: ``onednn`` or ``torch`` (always ``torch`` off the CPU)."""
    check_choice(choice)
    if str(device) != "cpu":
        return "torch"
    if choice == "onednn" and not onednn_available():
        raise InputError("--cpu-kernels onednn: this torch build has no usable oneDNN float32 linear op "
                         "(torch.ops.mkldnn._linear_pointwise); use --cpu-kernels auto or torch")
    if choice == "auto":
        return "onednn" if onednn_available() else "torch"
    return choice


def linears_on_onednn(choice: str, device: str, compile: bool = False) -> bool:
    """Whether the model's linear layers run on oneDNN (:func:`onednn_linears`): where the
    kernels resolve to ``onednn``, unless the layers are compiled (``--compile``): the compiler
    cannot lower oneDNN's ops, so compiled layers keep torch's (the accumulators' oneDNN panels
    run outside the graph and stay)."""
    return resolve(choice, device) == "onednn" and not compile


def _conv1d_type():
    """transformers' ``Conv1D`` (GPT-2's linear layers, weight stored as (in, out)), if importable."""
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # noqa: BLE001 - no transformers, or it moved: plain nn.Linear layers only
        return None
    return Conv1D


def _switchable(m, conv1d) -> bool:
    """Whether :func:`onednn_linears` runs layer ``m`` through oneDNN."""
    import torch

    w = getattr(m, "weight", None)
    kind = type(m) is torch.nn.Linear or (conv1d is not None and type(m) is conv1d)
    return not (not kind or "forward" in vars(m) or w is None or w.dtype != torch.float32
                or w.device.type != "cpu" or not w.is_contiguous())


def copied_weight_bytes(model) -> int:
    """Bytes of the transposed weight copies :func:`onednn_linears` makes (GPT-2's ``Conv1D`` layers).

    The corpus pass subtracts them from its default memory budget: for GPT-2 XL they are 6 GB."""
    import torch

    conv1d = _conv1d_type()
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if _switchable(m, conv1d) and type(m) is not torch.nn.Linear)


@contextlib.contextmanager
def onednn_linears(model, enabled: bool = True) -> Iterator[int]:
    """Run ``model``'s float32 CPU linear layers through oneDNN while the block runs.

    ``nn.Linear`` layers use their weight as it is. transformers' ``Conv1D`` (GPT-2's layers,
    ``y = x W + b`` with W stored as (in, out)) gets a transposed contiguous copy of its weight
    for the duration of the block, since oneDNN takes a transposed view only through a slow
    reference kernel: GPT-2's linear weights are held twice while the corpus pass runs.
    Forward hooks still fire (only ``forward`` is replaced, per instance). Layers of other
    types, whose weight is not a contiguous float32 CPU tensor, or whose ``forward`` already
    belongs to someone else (accelerate's offloading wraps it) keep theirs; so do calls with
    autograd on or a non-float32 input. Yields how many layers were switched.
    """
    import torch

    patched = []
    if enabled:
        op = torch.ops.mkldnn._linear_pointwise
        conv1d = _conv1d_type()
        for m in model.modules():
            if not _switchable(m, conv1d):
                continue
            # (out, in) weight for oneDNN: the layer's own, or a transposed copy of Conv1D's
            w = m.weight
            weight = w if type(m) is torch.nn.Linear else w.detach().T.contiguous()
            own = type(m).forward

            def forward(x, _m=m, _w=weight, _own=own):
                if x.dtype != torch.float32 or torch.is_grad_enabled():
                    return _own(_m, x)
                return op(x if x.is_contiguous() else x.contiguous(), _w, _m.bias, "none", [], "")

            m.forward = forward
            patched.append(m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            del m.forward
