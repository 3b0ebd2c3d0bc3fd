"""Forgetting predicted from the store: how far each tracked fact's value moves, and when the facts collapse.

From the keys, C and the intended changes alone (no forward pass), the closed form says that
after s edits a fact's value has moved by ``Σ_{j≤s} P(k*_j, k) r_j``; the run records its
norm (``predicted_norm``). Relative to the fact's own value ``|W_0 k|`` this is its **drift**
``d(s)``. Two coarser forecasts need less:

* **random walk**: ``sqrt(Σ_{j≤s} P(k*_j, k)² |r_j|²) / |W_0 k|`` — the drift if the intended
  changes pointed in unrelated directions (only P values and |r_j|);
* **statistical**: ``sqrt(s · E[P²]) · r_rms / |W_0 k|`` with E[P²] the mean square of the P
  values between edited and tracked keys and ``r_rms`` the run's rms |r_j| — the P statistics
  alone, which extends past the last edit.

The measured loss is the drop in ``log p(target_true)`` and whether the fact is still known
(greedy top-1; "still known" concerns the tracked facts the unedited model knows). The fit (R², Spearman's ρ, the AUC of drift for "forgotten") says how well the
drift explains it. A fact counts as forgotten in the forecast once its drift exceeds a critical
drift ``d_c``, fitted on half of the tracked facts (the other half checks it, against always
guessing the majority class); the forecast's
collapse step is the first where fewer than ``threshold`` of the tracked facts are still known.

Method-independent: it needs per step and fact only the predicted change's norm (any extra
dimension, e.g. a ``layer`` of a multi-layer method, is combined as a root sum of squares of
the per-layer drifts) and ``value_norm``.

A batched, multi-layer method (MEMIT, AlphaEdit) moves key ``k`` at layer l by
``Σ_b c_b R_b`` per step, with ``c = adjᵀk`` its coefficients on the batch's residuals. Its run
records ``walk_increment = Σ_b c_b² |R_b|²`` and ``coefficient_ms = mean_b c_b²`` per (step,
layer, item): the random walk adds the increments, and the statistical forecast uses, per
layer, the mean square coefficient over the tracked facts times the mean ``|R|²`` of a step
(``Σ_b |R_b|²``), so ``d(s)² = s · Σ_l E[c²]_l · E[|R|²]_l / |W⁰_l k|²``. The fit is also
given per layer (``*_by_layer``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

NOT_REACHED = -1


def relative_drift(predicted_norm: np.ndarray, value_norm: np.ndarray) -> np.ndarray:
    """``|Σ_j P r_j| / |W_0 k|`` per (step, item)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(predicted_norm, dtype=np.float64) / np.asarray(value_norm, dtype=np.float64)


def random_walk_drift(coefficient: np.ndarray, residual_norm: np.ndarray, value_norm: np.ndarray) -> np.ndarray:
    """``sqrt(cumsum_j P_ji² |r_j|²) / |v_i|`` per (step, item); step 0 (no edit) is 0.

    ``coefficient``: (step, item) with row 0 the unedited model (ignored); ``residual_norm``: (step,).
    """
    p = np.nan_to_num(np.asarray(coefficient, dtype=np.float64)[1:])
    r = np.nan_to_num(np.asarray(residual_norm, dtype=np.float64)[1:])
    acc = np.cumsum(p**2 * r[:, None] ** 2, axis=0)
    return relative_drift(np.sqrt(np.concatenate([np.zeros((1, p.shape[1])), acc])), value_norm)


def statistical_drift(mean_p2: float, r_rms: float, value_norm: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``sqrt(s · E[P²]) · r_rms / |v_i|`` per (step, item), for any steps (beyond the run too)."""
    scale = np.sqrt(np.asarray(steps, dtype=np.float64) * mean_p2) * r_rms
    return relative_drift(scale[:, None], np.asarray(value_norm)[None, :])


def logp_drop(p_true: np.ndarray) -> np.ndarray:
    """``log p_0 − log p_s`` per (step, item): how much belief in target_true the edits cost."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(np.asarray(p_true, dtype=np.float64))
    return logp[:1] - logp


def linear_r2(x: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares line y ≈ a + b·x (the squared Pearson correlation)."""
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.linregress(x, y).rvalue ** 2)


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties ½ (Mann–Whitney U / n₊n₋)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def critical_drift(drift: np.ndarray, known: np.ndarray) -> float:
    """The drift d_c for which "known ⇔ drift < d_c" is right for the most (step, fact) pairs.

    ``drift``, ``known``: flat arrays of (step, fact) pairs. Infinity when no pair is forgotten.
    Plain (not class-balanced) accuracy: the forecast is of the *share* still known, which a
    threshold tuned to the rarer class overstates.
    """
    drift, known = np.asarray(drift, dtype=np.float64), np.asarray(known, dtype=bool)
    if known.all():
        return float("inf")
    if not known.any():
        return 0.0
    cands = np.unique(drift)
    cands = np.concatenate([cands, [np.inf]])
    right = np.array([np.mean((drift < c) == known) for c in cands])
    return float(cands[int(np.argmax(right))])


def collapse_step(retention: np.ndarray, steps: np.ndarray, threshold: float) -> int:
    """The first step whose retention is below ``threshold`` (NOT_REACHED when none is)."""
    below = np.flatnonzero(np.asarray(retention) < threshold)
    return int(steps[below[0]]) if len(below) else NOT_REACHED


def _drift(ds: xr.Dataset) -> np.ndarray:
    d = ds["predicted_norm"] / ds["value_norm"]
    extra = [dim for dim in d.dims if dim not in ("step", "item")]
    if extra:
        d = np.sqrt((d**2).sum(extra))
    return np.asarray(d.transpose("step", "item").values, dtype=np.float64)


def _layer_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """``name`` as (step, layer, item), float64."""
    return np.asarray(ds[name].transpose("step", "layer", "item").values, dtype=np.float64)


def _layer_value_norm(ds: xr.Dataset) -> np.ndarray:
    """``value_norm`` as (layer, item) (one value per item repeated when it has no layer)."""
    v = ds["value_norm"]
    if "layer" not in v.dims:
        v = v.expand_dims(layer=ds.sizes["layer"])
    return np.asarray(v.transpose("layer", "item").values, dtype=np.float64)


def spread_random_walk_drift(walk_increment: np.ndarray, value_norm: np.ndarray) -> np.ndarray:
    """``sqrt(Σ_l Σ_{j≤s} inc_jli / |v_li|²)`` per (step, item); ``walk_increment`` (step, layer, item)
    with row 0 (no edit) zero, ``value_norm`` (layer, item)."""
    inc = np.nan_to_num(np.asarray(walk_increment, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_layer = np.cumsum(inc, axis=0) / np.asarray(value_norm, dtype=np.float64)[None] ** 2
    return np.sqrt(per_layer.sum(axis=1))


def spread_statistical_drift(mean_c2: np.ndarray, mean_r2: np.ndarray, value_norm: np.ndarray,
                             steps: np.ndarray) -> np.ndarray:
    """``sqrt(s · Σ_l E[c²]_l E[|R|²]_l / |v_li|²)`` per (step, item), for any steps.

    ``mean_c2``, ``mean_r2``: (layer,); ``value_norm``: (layer, item)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = ((np.asarray(mean_c2) * np.asarray(mean_r2))[:, None] / np.asarray(value_norm) ** 2).sum(axis=0)
    return np.sqrt(np.asarray(steps, dtype=np.float64)[:, None] * rate[None, :])


def add_forecast(ds: xr.Dataset, threshold: float = 0.5, horizon: int = 10) -> xr.Dataset:
    """Add the forecast arrays and its fit to an edit run's dataset (returns it).

    ``horizon``: the statistical forecast runs to ``horizon ×`` the run's number of edits.
    """
    known = ds["top1"].values.astype(bool)
    tracked = ds["role"].values == "tracked"
    steps = ds["step"].values
    n_e = int(steps[-1])
    drift = _drift(ds)
    spread = "walk_increment" in ds and "layer" in ds.dims  # a batched multi-layer method (MEMIT, AlphaEdit)
    if spread:
        rw = spread_random_walk_drift(_layer_values(ds, "walk_increment"), _layer_value_norm(ds))
    elif "coefficient" in ds and ds["coefficient"].dims == ("step", "item") and ds["residual_norm"].dims == ("step",):
        rw = random_walk_drift(ds["coefficient"].values, ds["residual_norm"].values, ds["value_norm"].values)
    else:
        rw = np.full_like(drift, np.nan)
    drop = np.where(tracked[None, :], logp_drop(ds["p_true"].values), np.nan)
    followed = tracked & known[0]  # "still known" concerns the tracked facts the unedited model knows
    measured = known[:, followed].mean(axis=1) if followed.any() else np.full(len(steps), np.nan)

    fit: dict[str, float | int] = {"collapse_threshold": threshold}
    x = drift[1:, tracked].ravel()
    y = drop[1:, tracked].ravel()
    kn = known[1:, tracked].ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    fit["n_points"] = int(ok.sum())
    fit["r2_logp_drop"] = linear_r2(x[ok], y[ok])
    rho = stats.spearmanr(x[ok], y[ok]) if ok.sum() >= 3 else None
    fit["spearman_logp_drop"] = float(rho.statistic) if rho is not None else float("nan")
    fit["spearman_logp_drop_p"] = float(rho.pvalue) if rho is not None else float("nan")
    was = np.broadcast_to(known[0, tracked], drift[1:, tracked].shape).ravel()
    fit["auc_forgotten"] = auc(x[ok & was], ~kn[ok & was])
    xr_ = rw[1:, tracked].ravel()
    okr = np.isfinite(xr_) & np.isfinite(y)
    fit["r2_logp_drop_random_walk"] = linear_r2(xr_[okr], y[okr])
    fit["spearman_logp_drop_random_walk"] = (float(stats.spearmanr(xr_[okr], y[okr]).statistic)
                                             if okr.sum() >= 3 else float("nan"))

    by_layer = None
    if "layer" in ds.dims and "layer" in ds["predicted_norm"].dims:
        by_layer = _layer_values(ds, "predicted_norm") / _layer_value_norm(ds)[None]
        r2s, rhos = [], []
        for li in range(by_layer.shape[1]):
            xl = by_layer[1:, li][:, tracked].ravel()
            okl = np.isfinite(xl) & np.isfinite(y)
            r2s.append(linear_r2(xl[okl], y[okl]))
            rhos.append(float(stats.spearmanr(xl[okl], y[okl]).statistic) if okl.sum() >= 3 else float("nan"))
        fit["r2_logp_drop_by_layer"], fit["spearman_logp_drop_by_layer"] = r2s, rhos

    # the critical drift from half of the tracked facts; the other half checks it
    idx = np.flatnonzero(followed)
    calib, check = idx[0::2], idx[1::2]
    d_c = critical_drift(drift[1:, calib].ravel(), known[1:, calib].ravel()) if len(calib) else float("nan")
    fit["critical_drift"] = d_c
    if len(check):
        fit["heldout_accuracy"] = float(np.mean((drift[1:, check] < d_c) == known[1:, check]))
        fit["heldout_majority_accuracy"] = float(max(known[1:, check].mean(), 1 - known[1:, check].mean()))
    predicted = (drift[:, followed] < d_c).mean(axis=1) if followed.any() else np.full(len(steps), np.nan)
    fit["predicted_collapse_step"] = collapse_step(predicted, steps, threshold)
    fit["measured_collapse_step"] = collapse_step(measured, steps, threshold)

    # the P statistics alone, extended past the run
    horizon_steps = np.arange(horizon * n_e + 1)
    p_off = r = None
    if not spread and "coefficient" in ds and ds["coefficient"].dims == ("step", "item"):
        p_off = ds["coefficient"].values[1:][:, followed]
        r = ds["residual_norm"].values[1:] if ds["residual_norm"].dims == ("step",) else None
    if spread and tracked.any() and "coefficient_ms" in ds:
        # P's statistics over the followed facts (over all tracked ones when the model knows none);
        # the retention they forecast concerns the followed facts only
        over = followed if followed.any() else tracked
        with np.errstate(invalid="ignore"):
            mean_c2 = np.nanmean(_layer_values(ds, "coefficient_ms")[1:][:, :, over], axis=(0, 2))
            res = np.asarray(ds["residual_norm"].transpose("step", "layer").values, dtype=np.float64)[1:]
            mean_r2 = np.nanmean(res**2, axis=0)
        if followed.any():
            stat = spread_statistical_drift(mean_c2, mean_r2, _layer_value_norm(ds)[:, followed], horizon_steps)
            stat_retention = (stat < d_c).mean(axis=1)
        else:
            stat_retention = np.full(len(horizon_steps), np.nan)
        fit["mean_p2_by_layer"] = [float(v) for v in mean_c2]
        fit["r_rms_by_layer"] = [float(v) for v in np.sqrt(mean_r2)]
        fit["mean_p2"], fit["r_rms"] = float(np.mean(mean_c2)), float(np.sqrt(np.mean(mean_r2)))
        fit["predicted_collapse_step_statistical"] = collapse_step(stat_retention, horizon_steps, threshold)
    elif p_off is not None and r is not None and p_off.size and np.isfinite(r).any():
        mean_p2 = float(np.nanmean(p_off**2))
        r_rms = float(np.sqrt(np.nanmean(r**2)))
        stat = statistical_drift(mean_p2, r_rms, ds["value_norm"].values[followed], horizon_steps)
        stat_retention = (stat < d_c).mean(axis=1)
        fit["mean_p2"], fit["r_rms"] = mean_p2, r_rms
        fit["predicted_collapse_step_statistical"] = collapse_step(stat_retention, horizon_steps, threshold)
    else:
        stat_retention = np.full(len(horizon_steps), np.nan)

    out = ds.assign_coords(forecast_step=horizon_steps)
    out["forecast_drift"] = (("step", "item"), drift, {
        "long_name": "predicted drift |Σ_j P(k*_j, k) r_j| / |W_0 k| (keys, C and r only)", "units": "1"})
    out["forecast_drift_random_walk"] = (("step", "item"), rw, {
        "long_name": "random-walk drift sqrt(Σ_j P² |r_j|²) / |W_0 k|", "units": "1"})
    if by_layer is not None:
        out["forecast_drift_by_layer"] = (("step", "layer", "item"), by_layer, {
            "long_name": "predicted drift per layer |Rᵀ adjᵀ k summed over steps| / |W⁰_l k|", "units": "1"})
    out["logp_true_drop"] = (("step", "item"), drop, {
        "long_name": "measured drop of log p(target_true) since step 0 (tracked facts)", "units": "nats"})
    out["measured_retention"] = ("step", measured, {"long_name": "share of tracked facts still known (top-1)",
                                                    "units": "1"})
    out["forecast_retention"] = ("step", predicted, {
        "long_name": "forecast share of tracked facts still known (drift below the critical drift)", "units": "1"})
    out["forecast_retention_statistical"] = ("forecast_step", stat_retention, {
        "long_name": "forecast share still known from the P statistics alone (E[P²], r_rms)", "units": "1"})
    fit["n_facts"], fit["n_known_facts"] = int(tracked.sum()), int(followed.sum())
    out.attrs["forecast"] = {k: (float(v) if isinstance(v, float) else v) for k, v in fit.items()}
    out.attrs["forecast_method"] = ("critical drift fitted on every other tracked fact (accuracy), "
                                    "checked on the rest; collapse step -1: not reached")
    return out
