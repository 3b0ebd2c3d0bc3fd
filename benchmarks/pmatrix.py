"""Benchmark 2: P matrices, kisstore vs the paper's method.

The paper's repository computes P pair by pair: for each (i, j) it runs the model to get
key i and key j at the layer (the keys are recomputed inside the O(N²) loop), then applies
``C⁻¹`` to form ``P_ij = k_iᵀC⁻¹k_j / k_iᵀC⁻¹k_i``. Our re-implementation follows that
description: each key comes from a whole-model forward pass of one item (as ROME's
``compute_ks``/``repr_tools`` do, LM head included), ``C⁻¹`` is formed once per layer in
float64 and applied per pair. kisstore runs one batched item pass for all layers and
whitens with a Cholesky factor (``kisstore.analysis.geometry``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.common import Result, median, sync, timed


def geometry():
    """``kisstore.analysis.geometry`` (numpy/scipy only)."""
    from kisstore.analysis import geometry as g

    return g


def pick_ridge(covs: dict[int, np.ndarray], layers: Sequence[int]) -> float:
    """The smallest ridge (0 first) under which every layer's C has a usable Cholesky factor."""
    from kisstore.errors import NumericalError

    g = geometry()
    for ridge in (0.0, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2):
        try:
            for layer in layers:
                g.whitening(covs[layer], ridge, layer=layer)
            return ridge
        except NumericalError:
            continue
    return 1e-1


class PaperKeys:
    """Keys recomputed on demand, one whole-model forward pass of one item per key."""

    def __init__(self, lm, items, layer: int):
        from kisstore.extract.positions import encode_item

        self.lm = lm
        self.enc = [encode_item(lm.tokenizer, it) for it in items]
        self.module = lm.key_site.find(lm.model, layer)

    def key(self, i: int):
        import torch

        held = {}

        def hook(_module, args):
            held["x"] = args[0]

        handle = self.module.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                self.lm.model(input_ids=torch.tensor([self.enc[i].input_ids], device=self.lm.device))
        finally:
            handle.remove()
        return held["x"].reshape(-1, held["x"].shape[-1])[self.enc[i].key_pos].double()


def paper_p(lm, items, layer: int, cov: np.ndarray, ridge: float,
            pair_seconds: list[float] | None = None) -> np.ndarray:
    """The paper's O(N²) loop for one layer: both keys recomputed for every pair (i, j).
    ``pair_seconds``, if given, receives each pair's wall time."""
    import torch

    c = torch.as_tensor(geometry().regularize(cov, ridge), device=lm.device)
    c_inv = torch.linalg.inv(c)
    keys = PaperKeys(lm, items, layer)
    n = len(items)
    p = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            start = time.perf_counter()
            k_i, k_j = keys.key(i), keys.key(j)
            u = c_inv @ k_i  # C⁻¹ applied per pair, as the pairwise loop does
            p[i, j] = float(k_j @ u) / float(k_i @ u)  # float(): the value reaches the host
            if pair_seconds is not None:
                pair_seconds.append(time.perf_counter() - start)
    sync(lm.device)
    return p


def kisstore_p(lm, items, layers: Sequence[int], covs: dict[int, np.ndarray], ridge: float,
               keys_out: dict[int, np.ndarray] | None = None) -> dict[int, np.ndarray]:
    """kisstore: one batched item pass for all ``layers``, then a Cholesky solve per layer.
    ``keys_out``, if given, receives the keys (layer → (N, d_ff))."""
    from kisstore.extract.keys import item_pass

    g = geometry()
    keys = item_pass(lm, items, list(layers), progress=False).keys
    if keys_out is not None:
        keys_out.update({layer: keys[r] for r, layer in enumerate(layers)})
    return {layer: g.p_matrix(g.gram(keys[r], covs[layer], ridge, layer=layer)) for r, layer in enumerate(layers)}


def paper_algebra(keys: np.ndarray, cov: np.ndarray, ridge: float) -> np.ndarray:
    """The paper's per-pair formula ``k_iᵀC⁻¹k_j / k_iᵀC⁻¹k_i`` with an explicit inverse, on given
    keys: it separates the two methods' algebra from the forward passes' rounding."""
    k = np.asarray(keys, dtype=np.float64)
    g = k @ np.linalg.inv(geometry().regularize(cov, ridge)) @ k.T
    return g / np.diag(g)[:, None]


def best_threads(lm, items, device: str) -> int:
    """On CPU, the torch thread count (1 or all) under which a one-item forward pass is faster:
    tiny forward passes on an oversubscribed machine can be many times slower with 2 threads.
    Both methods then run with it (the baseline gets its best setting)."""
    import torch

    if device.startswith("cuda"):
        return torch.get_num_threads()
    from kisstore.extract.positions import encode_item

    ids = torch.tensor([encode_item(lm.tokenizer, items[0]).input_ids])
    default = torch.get_num_threads()
    best, best_t = default, float("inf")
    for n in sorted({1, default}):
        torch.set_num_threads(n)
        with torch.no_grad():
            lm.model(input_ids=ids)
            start = time.perf_counter()
            for _ in range(3):
                lm.model(input_ids=ids)
        dt = time.perf_counter() - start
        if dt < best_t:
            best, best_t = n, dt
    torch.set_num_threads(default)
    return best


def run(lm, items: Sequence, covs: dict[int, np.ndarray], *, sample_layers: Sequence[int], n_small: int,
        n_large: int, measure_large: bool, device: str, progress=print) -> list[Result]:
    """Measure both methods at ``n_small`` items on ``sample_layers``; extrapolate to ``n_large`` items
    and every layer (kisstore measured there directly when ``measure_large``)."""
    import torch

    all_layers = list(range(lm.n_layers))
    ridge = pick_ridge(covs, all_layers if measure_large else sample_layers)
    small = list(items[:n_small])
    default_threads = torch.get_num_threads()
    threads = best_threads(lm, small, device)
    torch.set_num_threads(threads)
    try:
        per_layer: dict[int, dict[str, Any]] = {}
        max_diff = max_abs = max_algebra = 0.0
        for layer in sample_layers:
            # kisstore once before and twice after the baseline, median; the baseline's pairs
            # by their median too: both estimators shrug off bursts of load from elsewhere
            t_k = [timed(lambda _l=layer: kisstore_p(lm, small, [_l], covs, ridge), device)[0]]
            pairs: list[float] = []
            t_total, p_paper = timed(lambda _l=layer, _s=pairs: paper_p(lm, small, _l, covs[_l], ridge, _s), device)
            t_k += [timed(lambda _l=layer: kisstore_p(lm, small, [_l], covs, ridge), device)[0] for _ in range(2)]
            keys: dict[int, np.ndarray] = {}
            p_k = kisstore_p(lm, small, [layer], covs, ridge, keys)
            diff = float(np.abs(p_paper - p_k[layer]).max() / np.abs(p_k[layer]).max())
            algebra = float(np.abs(paper_algebra(keys[layer], covs[layer], ridge) - p_k[layer]).max())
            max_diff = max(max_diff, diff)
            max_abs = max(max_abs, float(np.abs(p_paper - p_k[layer]).max()))
            max_algebra = max(max_algebra, algebra)
            t_p = median(pairs) * n_small**2
            per_layer[layer] = {"paper_s": t_p, "paper_wall_s": t_total, "kisstore_s": median(t_k),
                                "ratio": t_p / median(t_k), "max_rel_diff_p": diff, "algebra_diff_p": algebra}
            progress(f"  layer {layer}: paper {t_p:.1f} s for {n_small}² pairs (wall {t_total:.1f} s), kisstore "
                     f"{median(t_k):.2f} s, max|ΔP|/max|P| {diff:.1e} (same keys: {algebra:.1e})")
        t_pair = median([v["paper_s"] / n_small**2 for v in per_layer.values()])
        t_inv, _ = timed(lambda: torch.linalg.inv(torch.as_tensor(covs[sample_layers[0]], device=lm.device)), device)
        paper_large = lm.n_layers * (n_large**2 * t_pair + t_inv)
        if measure_large:
            t_large, _ = timed(lambda: kisstore_p(lm, list(items[:n_large]), all_layers, covs, ridge), device)
            how_k = f"measured: one item pass of {n_large} items for all {lm.n_layers} layers + {lm.n_layers} Cholesky solves"
        else:
            t_items, _ = timed(lambda: kisstore_p(lm, small, all_layers[:1], covs, ridge), device)
            g = geometry()
            t_one, _ = timed(lambda: g.p_matrix(g.gram(np.ones((n_small, lm.d_ff)), covs[0], ridge)), device)
            t_large = t_items * n_large / n_small + lm.n_layers * t_one
            how_k = (f"extrapolated: item pass × {n_large}/{n_small} (linear in items) + {lm.n_layers} × one "
                     "layer's Cholesky solve")
        progress(f"  N={n_large}, {lm.n_layers} layers: paper ≈ {paper_large / 3600:.1f} h (extrapolated), "
                 f"kisstore {t_large:.1f} s")
    finally:
        torch.set_num_threads(default_threads)
    ratios = [v["ratio"] for v in per_layer.values()]
    return [
        Result("p_speedup_measured", f"P matrices at N={n_small} on layers {list(sample_layers)}: paper's method vs kisstore",
               median(ratios), None, "higher", "×", {"per_layer": per_layer, "ridge": ridge, "torch_threads": threads}),
        Result("p_speedup", f"P matrices at N={n_large}, all {lm.n_layers} layers: paper's method vs kisstore",
               paper_large / t_large, 1000.0, "higher", "×",
               {"paper_s_extrapolated": paper_large, "kisstore_s": t_large, "seconds_per_pair": t_pair,
                "extrapolation_paper": f"{lm.n_layers} layers × ({n_large}² pairs × {t_pair * 1e3:.1f} ms per pair "
                                       f"(median pair time, median over measured layers) + one C⁻¹ {t_inv:.2f} s)",
                "kisstore": how_k}),
        # 1e-5: issue 6's "identical to 1e-5" for float32 results (its covariance target). The
        # end-to-end difference is float32 rounding of the keys in two differently shaped
        # forwards, amplified by whitening: 4e-7 to 1.0e-6 over runs, the algebra alone ~1e-14
        Result("p_max_rel_diff", "P matrices: max |P_paper − P_kisstore| / max |P|", max_diff, 1e-5, "lower", "",
               {"note": "end to end: the paper's keys come from one-item forward passes, kisstore's from its batched, "
                        "padded pass, so float32 rounding in the forward differs; float64 algebra on both sides; "
                        "target: the issue's 1e-5 for float32 results, as for the covariances",
                "max_abs_diff": max_abs, "same_keys_diff": max_algebra, "ridge": ridge}),
    ]
