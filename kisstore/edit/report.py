"""Figures of an edit run (PNG, matplotlib's Agg backend): forgetting curve, identity check, P values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def forgetting_curve(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per step: mean p(target_true) and top-1 accuracy of the tracked facts, efficacy, retention.

    ``retention`` is the mean p(target_new) over the facts edited so far (NaN at step 0).
    """
    tracked = ds["role"].values == "tracked"
    edited = ~tracked
    n_steps = ds.sizes["step"]
    p_new = ds["p_new"].values
    retention = np.full(n_steps, np.nan)
    for s in range(1, n_steps):
        retention[s] = np.nanmean(p_new[s, edited][:s])
    return {
        "step": ds["step"].values,
        "p_true": np.nanmean(ds["p_true"].values[:, tracked], axis=1) if tracked.any() else np.full(n_steps, np.nan),
        "top1": ds["top1"].values[:, tracked].mean(axis=1) if tracked.any() else np.full(n_steps, np.nan),
        "efficacy": ds["efficacy"].values,
        "retention": retention,
    }


def forgetting_table(ds: xr.Dataset, every: int = 5) -> list[dict[str, float]]:
    """Rows of the forgetting curve at steps 0, every, 2·every, …, and the last step."""
    curve = forgetting_curve(ds)
    last = int(curve["step"][-1])
    steps = sorted({*range(0, last + 1, every), last})
    tracked = ds["role"].values == "tracked"
    interf = ds["interference_measured"].values[:, tracked].mean(axis=1) if tracked.any() else None
    alpha = ds["alphaedit_interference_measured"].values[:, tracked].mean(axis=1) if tracked.any() else None
    rows = []
    for s in steps:
        rows.append({
            "step": s, "p_true": float(curve["p_true"][s]), "top1": float(curve["top1"][s]),
            "efficacy": float(curve["efficacy"][s]), "retention": float(curve["retention"][s]),
            "interference": float(interf[s]) if interf is not None else float("nan"),
            "alphaedit_interference": float(alpha[s]) if alpha is not None else float("nan"),
            "relative_error": float(ds["step_relative_error"].values[s]),
        })
    return rows


def write_report(ds: xr.Dataset, folder: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``forgetting_curve.png``, ``predicted_vs_measured.png``, ``interference_vs_p.png`` and,
    where the run has them, ``counterfact_metrics.png`` and ``forecast.png`` (at ``dpi``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{ds.attrs.get('model_id', '')} layer {ds.attrs.get('layer', '')}, {ds.attrs.get('method', '')} edits"
    paths = []

    curve = forgetting_curve(ds)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curve["step"], curve["top1"], "o-", ms=3, label="tracked facts: top-1 accuracy (target_true)")
    ax.plot(curve["step"], curve["p_true"], "s-", ms=3, label="tracked facts: mean p(target_true)")
    ax.plot(curve["step"][1:], curve["efficacy"][1:], ".", alpha=0.6, label="efficacy: p(target_new) after its edit")
    ax.plot(curve["step"], curve["retention"], "--", label="edited so far: mean p(target_new)")
    ax.set(xlabel="number of sequential edits", ylabel="probability / accuracy", ylim=(-0.02, 1.02),
           title=f"Forgetting curve — {title}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "forgetting_curve.png", dpi))

    fig, ax = plt.subplots(figsize=(5.2, 5))
    pred = ds["predicted_norm"].values[1:].ravel()
    meas = ds["measured_norm"].values[1:].ravel()
    keep = (pred > 0) & (meas > 0)
    ax.loglog(pred[keep], meas[keep], ".", ms=3, alpha=0.5)
    lim = [min(pred[keep].min(), meas[keep].min()), max(pred[keep].max(), meas[keep].max())] if keep.any() else [1, 1]
    ax.plot(lim, lim, "k-", lw=0.8, label="measured = predicted")
    ax.set(xlabel="predicted |Δ value| (keys, C, Λ)", ylabel="measured |W_n k − W_0 k| (edited weight)",
           title=f"max relative error {ds.attrs.get('max_relative_error', float('nan')):.1e}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "predicted_vs_measured.png", dpi))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    steps = slice(1, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = ds["step_change_norm"].values[steps] / ds["residual_norm"].values[steps, None]
    p = ds["coefficient"].values[steps]
    mask = _not_self(ds)
    ax.plot(p[mask], rel[mask], ".", ms=3, alpha=0.5, label="closed-form edit (ROME)")
    pa = np.abs(ds["alphaedit_coefficient"].values[steps])
    ax.plot(p[mask], pa[mask], "x", ms=3, alpha=0.4, label="same pair under AlphaEdit's update")
    x = np.linspace(np.nanmin(p[mask]) if mask.any() else -1, np.nanmax(p[mask]) if mask.any() else 1, 50)
    ax.plot(x, np.abs(x), "k-", lw=0.8, label="|P| (theory)")
    ax.set(xlabel="P value G(k*_j, k_i) / G(k*_j, k*_j)", ylabel="|change of k_i's value| / |intended change r_j|",
           title="Interference of one edit on every other key")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "interference_vs_p.png", dpi))
    if "eval_step" in ds.dims:
        paths.append(_counterfact_figure(ds, title, out / "counterfact_metrics.png", dpi))
    if "forecast_drift" in ds:
        paths.append(_forecast_figure(ds, title, out / "forecast.png", dpi))
    return paths


def _counterfact_figure(ds: xr.Dataset, title: str, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    s = ds["eval_step"].values
    fig, (ax, fx) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("efficacy_score", "efficacy: p(new) > p(true), edited prompt", "o-"),
                              ("paraphrase_score", "generalization: p(new) > p(true), paraphrases", "s-"),
                              ("neighborhood_score", "specificity: p(true) > p(new), neighborhood", "^-")):
        ax.plot(s, ds[key].values, style, ms=4, label=label)
    if "measured_retention" in ds:
        ax.plot(ds["step"].values, ds["measured_retention"].values, "k--", lw=1, label="tracked facts still known")
    ax.set(xlabel="number of sequential edits", ylabel="share of facts (score, 0–1)", ylim=(-0.02, 1.02),
           title="CounterFact scores")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fx.plot(s, ds["fluency"].values, "o-", ms=4, color="C4")
    fx.set(xlabel="number of sequential edits", ylabel="n-gram entropy (bits)",
           title="Fluency of greedy generations")
    fx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def _forecast_figure(ds: xr.Dataset, title: str, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fit = ds.attrs.get("forecast", {})
    followed = ds["role"].values == "tracked"
    drift = ds["forecast_drift"].values[1:, followed]
    drop = ds["logp_true_drop"].values[1:, followed]
    steps = np.broadcast_to(ds["step"].values[1:, None], drift.shape)
    fig, (ax, rx) = plt.subplots(1, 2, figsize=(10, 4))
    sc = ax.scatter(drift.ravel(), drop.ravel(), c=steps.ravel(), s=6, cmap="viridis", alpha=0.7)
    fig.colorbar(sc, ax=ax, label="edit step")
    ax.set(xlabel="predicted drift |Σ P(k*_j,k) r_j| / |W₀k| (dimensionless)",
           ylabel="measured drop of log p(target_true) (nats)",
           title=f"R² {fit.get('r2_logp_drop', float('nan')):.2f}, Spearman ρ {fit.get('spearman_logp_drop', float('nan')):.2f}")
    ax.grid(alpha=0.3)
    rx.plot(ds["step"].values, ds["measured_retention"].values, "o-", ms=3, label="measured (top-1)")
    rx.plot(ds["step"].values, ds["forecast_retention"].values, "--",
            label=f"forecast: drift < d_c = {fit.get('critical_drift', float('nan')):.2f}")
    stat = ds["forecast_retention_statistical"]
    rx.plot(stat["forecast_step"].values, stat.values, ":", label="forecast from P statistics alone")
    thr = fit.get("collapse_threshold", 0.5)
    rx.axhline(thr, color="grey", lw=0.8)
    rx.set(xlabel="number of sequential edits", ylabel="share of tracked facts still known", ylim=(-0.02, 1.02),
           title=f"collapse (< {thr:g}): predicted {fit.get('predicted_collapse_step')}, "
                 f"measured {fit.get('measured_collapse_step')}, P-stats {fit.get('predicted_collapse_step_statistical')}")
    rx.legend(fontsize=7)
    rx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def _not_self(ds: xr.Dataset) -> np.ndarray:
    """Mask (step ≥ 1, item) without each step's own edited fact."""
    n_steps = ds.sizes["step"] - 1
    mask = np.ones((n_steps, ds.sizes["item"]), dtype=bool)
    mask[np.arange(n_steps), np.arange(n_steps)] = False
    return mask


def _save(fig, path: Path, dpi: int = 150) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
