"""Benchmarks 1, 3 and 4: the all-layer covariance pass, side by side with its baselines.

Per corpus batch (a "round"), these kinds of work run back to back, their order rotated
from round to round so that load from other processes falls on all of them alike:

- ``forward``: the model's own forward (``model(input_ids, attention_mask)``: body, final norm
  and the LM head's logits), no hooks, with the float32 kernels kisstore's pass uses (oneDNN
  linears on CPU where available): the baseline of benchmark 3, what running the model costs;
- ``bare``: the body's forward alone (decoder layers and final norm, no LM head), same kernels: what the
  accumulators themselves add is measured against it (an info row, with its floor);
- ``forward_stock`` (CPU with oneDNN only): the model's forward with torch's stock kernels,
  what a transformers user runs;
- ``kisstore``: ``kisstore.extract.covariance.accumulate`` with all layers' accumulators;
- ``layer_stats(l)``: our re-implementation of ROME's method for a few sampled layers l;
- a large float32 GEMM (the hardware's reference FLOP/s for benchmark 4).

Each kind of work runs twice per round (order reversed the second time, the repeat adding
into scratch accumulators) and the faster time is kept, since load from other processes only
adds time. Per-round ratios are summarised by their median; ratios of totals are reported too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import Result, gemm_flops, median, nonembedding_params, timed


class _Stop(Exception):
    """Raised by the baseline's hook: ROME's ``Trace(..., stop=True)`` ends the forward there."""


class Float32SecondMoment:
    """ROME's ``SecondMoment`` statistic as its description gives it: a float32 running sum
    of ``aᵀa`` (allocated like the first batch) and a count; the moment is ``sum / count``."""

    def __init__(self) -> None:
        self.count = 0
        self.mom2 = None

    def add(self, a) -> None:
        if self.count == 0:
            self.mom2 = a.new_zeros(a.shape[1], a.shape[1])
        self.count += a.shape[0]
        self.mom2.addmm_(a.t(), a)

    def moment(self) -> np.ndarray:
        return (self.mom2 / self.count).double().cpu().numpy()


def flatten_masked(data, mask):
    """(batch, seq, d) → (non-padding tokens, d), as ROME's ``flatten_masked_batch`` does."""
    flat = data.reshape(-1, data.shape[-1])
    return flat[mask.reshape(-1).nonzero()[:, 0]]


def layer_stats_pass(lm, layer: int, batches: Iterable, stat: Float32SecondMoment) -> None:
    """One corpus pass for ONE layer, the method of ROME's ``layer_stats``: hook the layer's
    down-projection, run the whole model on each batch until that module has run, stop there,
    and add the masked inputs to a float32 second moment."""
    import torch

    module = lm.key_site.find(lm.model, layer)
    held: dict[str, Any] = {}

    def hook(_module, args, _output):
        held["input"] = args[0]
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                ids = batch.input_ids.to(lm.device)
                mask = batch.attention_mask.to(lm.device)
                try:
                    lm.model(input_ids=ids, attention_mask=mask)
                except _Stop:
                    pass
                stat.add(flatten_masked(held.pop("input"), mask).float())
    finally:
        handle.remove()


def bare_forward(lm, batch, kernels: str = "torch", *, head: bool = False, compile: bool = False) -> None:
    """A forward pass on one batch, no hooks: the body alone (decoder layers and final norm, no
    LM head), or with ``head`` the model's own forward, logits for every position included.
    ``kernels="onednn"`` runs the linear layers through the kernels kisstore's CPU pass uses;
    ``compile`` runs the decoder layers through ``torch.compile``, as kisstore's pass does then."""
    import contextlib

    import torch

    from kisstore.extract.cpu_kernels import linears_on_onednn, onednn_linears
    from kisstore.extract.hooks import compiled_layers

    net = lm.model if head else lm.model.base_model
    with (torch.inference_mode(), onednn_linears(lm.model, enabled=linears_on_onednn(kernels, lm.device, compile)),
          compiled_layers(lm.model, lm.key_site, [lm.n_layers - 1]) if compile else contextlib.nullcontext()):
        net(input_ids=batch.input_ids.to(lm.device), attention_mask=batch.attention_mask.to(lm.device),
            use_cache=False)


def forward_flops(lm, batch, n_params: int) -> float:
    """Useful FLOPs of the body on a batch up to the last layer's key: 2 per weight per token,
    plus causal attention (QKᵀ and AV over the positions before each token), minus the last
    layer's down-projection and final norm, which the corpus pass never runs."""
    cfg = lm.model.config
    heads = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    lengths = batch.attention_mask.sum(1).double().numpy()
    tokens = float(lengths.sum())
    attention = float(lm.n_layers * 2.0 * heads * (lengths * (lengths + 1)).sum())
    skipped = 2.0 * cfg.hidden_size * lm.d_ff * tokens
    return 2.0 * n_params * tokens + attention - skipped


def extrapolate_all_layers(times: dict[int, float], n_layers: int) -> float:
    """Time of ``layer_stats`` for every layer from a few: a pass to layer l costs a + b·(l+1)
    (b: one block's forward; a: the per-pass fixed cost, the addmm included). Fit a, b by least
    squares and sum over l = 0…L−1: ``L·a + b·L(L+1)/2``."""
    x = np.array([layer + 1 for layer in times], dtype=float)
    y = np.array(list(times.values()), dtype=float)
    total_blocks = n_layers * (n_layers + 1) / 2
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.mean(y / x) * total_blocks)
    b, a = np.polyfit(x, y, 1)
    if b <= 0:  # noise swamped the slope: fall back to proportional cost
        return float(np.mean(y / x) * total_blocks)
    return float(n_layers * a + b * total_blocks)


@dataclass
class CorpusRun:
    """What the side-by-side corpus pass measured, and kisstore's covariances for later benchmarks."""

    results: list[Result]
    covs: dict[int, np.ndarray]  # layer → kisstore's C (float64), every layer
    n_tokens: int
    details: dict[str, Any] = field(default_factory=dict)


def run(lm, batches: Sequence, *, sample_layers: Sequence[int], device: str, warmup: Sequence = (),
        compile: bool = False, progress=print) -> CorpusRun:
    """Benchmarks 1 (covariance vs layer_stats), 3 (overhead) and 4 (FLOP/s vs GEMM)."""
    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.covariance import accumulate
    from kisstore.extract.cpu_kernels import resolve

    kernels = resolve("auto", device)
    layers = list(range(lm.n_layers))
    moments = {layer: SecondMoment(lm.d_ff, device) for layer in layers}
    rome = {layer: Float32SecondMoment() for layer in sample_layers}
    n_params = nonembedding_params(lm.model)

    scratch = {layer: SecondMoment(lm.d_ff, device) for layer in layers}

    def kisstore_pass(b, repeat: bool) -> None:
        accumulate(lm, layers, iter([b]), scratch if repeat else moments, compile=compile)

    def baseline_pass(b, repeat: bool, layer: int) -> None:
        layer_stats_pass(lm, layer, [b], Float32SecondMoment() if repeat else rome[layer])

    work = {
        "forward": lambda b, repeat: bare_forward(lm, b, kernels, head=True, compile=compile),
        "bare": lambda b, repeat: bare_forward(lm, b, kernels, compile=compile),
        # (compiled layers keep torch's linears: the stock forward would be the same work)
        **({"forward_stock": lambda b, repeat: bare_forward(lm, b, head=True)} if kernels != "torch" and not compile
           else {}),
        "kisstore": kisstore_pass,
        **{f"layer_stats:{layer}": (lambda b, repeat, _l=layer: baseline_pass(b, repeat, _l))
           for layer in sample_layers},
    }
    # first-call costs (kernel choice, allocator; with compile, compiling static and dynamic-shape
    # graphs) stay out of the timings
    for w in warmup:
        for fn in work.values():
            fn(w, True)
    rounds: list[dict[str, Any]] = []
    names = list(work)
    for r, batch in enumerate(batches):
        # each kind of work twice (the repeat into scratch accumulators), order rotated, the
        # faster of the two kept: load from other processes only ever adds time
        t: dict[str, float] = {}
        order = names[r % len(names):] + names[: r % len(names)]
        for repeat in (False, True):
            for name in order if not repeat else order[::-1]:
                dt, _ = timed(lambda _n=name, _b=batch, _r=repeat: work[_n](_b, _r), device)
                t[name] = min(t.get(name, float("inf")), dt)
        gemm = gemm_flops(device, repeats=2)
        flops_fwd = forward_flops(lm, batch, n_params)
        flops_acc = float(batch.tokens) * lm.d_ff**2 * lm.n_layers
        rome_all = extrapolate_all_layers({layer: t[f"layer_stats:{layer}"] for layer in sample_layers}, lm.n_layers)
        rounds.append({"tokens": batch.tokens, "shape": list(batch.input_ids.shape), "times": t, "gemm_flops": gemm,
                       "flops_forward": flops_fwd, "flops_accumulate": flops_acc, "layer_stats_all_layers": rome_all})
        progress(f"  round {r + 1}/{len(batches)}: {batch.tokens} tokens, forward {t['forward']:.2f} s, "
                 f"body {t['bare']:.2f} s, "
                 f"kisstore {t['kisstore']:.2f} s, layer_stats {', '.join(f'{k[12:]}: {v:.2f} s' for k, v in t.items() if k.startswith('layer_stats'))}"
                 f", GEMM {gemm['best'] / 1e9:.0f} GFLOP/s")

    tot = {name: sum(r["times"][name] for r in rounds) for name in names}
    n_tokens = sum(r["tokens"] for r in rounds)
    tot_rome = sum(r["layer_stats_all_layers"] for r in rounds)

    speed = [r["layer_stats_all_layers"] / r["times"]["kisstore"] for r in rounds]
    overhead = [r["times"]["kisstore"] / r["times"]["forward"] for r in rounds]
    overhead_body = [r["times"]["kisstore"] / r["times"]["bare"] for r in rounds]
    floor = [1 + r["flops_accumulate"] / r["gemm_flops"]["best"] / r["times"]["bare"] for r in rounds]
    useful = [(r["flops_forward"] + r["flops_accumulate"]) / r["times"]["kisstore"] for r in rounds]
    eff = [u / r["gemm_flops"]["best"] for u, r in zip(useful, rounds, strict=True)]
    eff_torch = [u / r["gemm_flops"]["torch"] for u, r in zip(useful, rounds, strict=True)]

    covs = {layer: m.total() / m.count for layer, m in moments.items()}
    diffs = {}
    for layer in sample_layers:
        ref = covs[layer]
        diffs[layer] = float(np.abs(rome[layer].moment() - ref).max() / np.abs(ref).max())
    per_layer_s = {layer: tot[f"layer_stats:{layer}"] for layer in sample_layers}
    formula = (f"t(l) = a + b·(l+1) fitted on layers {list(sample_layers)}; "
               f"all {lm.n_layers} layers = {lm.n_layers}·a + b·{lm.n_layers * (lm.n_layers + 1) // 2}")
    results = [
        Result("cov_speedup", f"Covariance, all {lm.n_layers} layers: kisstore one pass vs layer_stats one pass per layer",
               median(speed), 8.0, "higher", "×",
               {"per_round": speed, "ratio_of_totals": tot_rome / tot["kisstore"],
                "kisstore_s": tot["kisstore"], "layer_stats_all_layers_s_extrapolated": tot_rome,
                "layer_stats_measured_s": per_layer_s, "extrapolation": formula, "tokens": n_tokens}),
        Result("cov_max_rel_diff", "Covariance difference, max|ΔC| / max|C| on the sampled layers",
               max(diffs.values()), 1e-5, "lower", "",
               {"per_layer": diffs, "note": f"kisstore: float32 upper-triangle products ({kernels} kernels) into float64; layer_stats: float32 addmm into float32"}),
        Result("overhead", f"Extraction overhead: corpus pass with {lm.n_layers} accumulators vs the model's forward "
               "(no hooks, same kernels)", median(overhead), 1.25, "lower", "×",
               {"per_round": overhead, "ratio_of_totals": tot["kisstore"] / tot["forward"], "kernels": kernels,
                "tokens_per_s_forward": n_tokens / tot["forward"], "tokens_per_s_kisstore": n_tokens / tot["kisstore"],
                "lm_head_share": 1 - tot["bare"] / tot["forward"],  # the body alone vs the body and the head
                "baseline": "the model's own forward, model(input_ids, attention_mask): the body, the final norm "
                            "and the LM head's logits for every position (padding included), as running the "
                            "model costs; kisstore's pass stops at the last layer's key instead"}),
        Result("overhead_accumulators", f"Accumulators' own cost: corpus pass with {lm.n_layers} accumulators vs "
               "the body's forward alone (no LM head, same kernels)", median(overhead_body), None, "lower", "×",
               {"per_round": overhead_body, "ratio_of_totals": tot["kisstore"] / tot["bare"], "kernels": kernels,
                "tokens_per_s_bare": n_tokens / tot["bare"], "tokens_per_s_kisstore": n_tokens / tot["kisstore"],
                "floor": median(floor),
                "floor_definition": "1 + (accumulation FLOPs at the large-GEMM rate) / (measured body forward time): "
                                    "the ratio if the accumulation ran at the hardware's GEMM rate doing only "
                                    "syrk's d_ff² FLOPs per token and layer"}),
        Result("flop_efficiency", "Useful FLOP/s of the corpus pass ÷ FLOP/s of a large float32 GEMM",
               median(eff), 0.5, "higher", "",
               {"per_round": eff, "useful_gflops": median(useful) / 1e9,
                "gemm_gflops": median([r["gemm_flops"]["best"] for r in rounds]) / 1e9,
                "gemm_gflops_by_library": {lib: median([r["gemm_flops"][lib] for r in rounds]) / 1e9
                                           for lib in rounds[0]["gemm_flops"] if lib != "best"},
                "efficiency_vs_torch_gemm": median(eff_torch),
                "flops_per_token_forward": sum(r["flops_forward"] for r in rounds) / n_tokens,
                "flops_per_token_accumulate": float(lm.d_ff**2 * lm.n_layers),
                "forward_nonembedding_params": n_params,
                "definition": "forward 2·params(non-embedding) + causal attention per token; accumulation d_ff²·layers per token (syrk)"}),
    ]
    if "forward_stock" in tot:
        vs_stock = [r["times"]["kisstore"] / r["times"]["forward_stock"] for r in rounds]
        results.insert(4, Result(
            "vs_stock_forward", f"Corpus pass with {lm.n_layers} accumulators (oneDNN kernels) vs the stock "
            "transformers forward alone (torch's MKL kernels)", median(vs_stock), None, "lower", "×",
            {"per_round": vs_stock, "ratio_of_totals": tot["kisstore"] / tot["forward_stock"],
             "stock_forward_vs_onednn_forward": median([r["times"]["forward_stock"] / r["times"]["forward"]
                                                        for r in rounds]),
             "tokens_per_s_stock": n_tokens / tot["forward_stock"]}))
    return CorpusRun(results, covs, n_tokens, {"rounds": rounds, "sample_layers": list(sample_layers),
                                               "kernels": kernels})
