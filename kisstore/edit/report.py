"""Figures of edit runs (PNG, matplotlib's Agg backend): forgetting curve, identity check, P values;
for MEMIT/AlphaEdit runs the per-layer check and drift; and several runs (methods) side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def is_spread(ds: xr.Dataset) -> bool:
    """A run of a method spread over a layer range (MEMIT, AlphaEdit): arrays on (step, layer, item)."""
    return "layer" in ds.dims and "layer" in ds["predicted_norm"].dims


def run_title(ds: xr.Dataset) -> str:
    """'smollm2-135m layer 4, rome edits' / 'smollm2-135m layers 3–8, memit edits in batches of 20'."""
    a = ds.attrs
    if is_spread(ds):
        lay = [int(x) for x in ds["layer"].values]
        where = f"layers {lay[0]}–{lay[-1]}" if len(lay) > 1 else f"layer {lay[0]}"
        return f"{a.get('model_id', '')} {where}, {a.get('method', '')} edits in batches of {a.get('batch', '?')}"
    return f"{a.get('model_id', '')} layer {a.get('layer', '')}, {a.get('method', '')} edits"


def forgetting_curve(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per step: mean p(target_true) and top-1 accuracy of the tracked facts, efficacy, retention.

    ``retention`` is the mean p(target_new) over the facts edited so far (NaN at step 0);
    ``edited`` the number of facts edited by the step (the step itself for one fact a step,
    step × batch for MEMIT/AlphaEdit), the axis on which runs of different methods compare.
    """
    tracked = ds["role"].values == "tracked"
    edited = ~tracked
    n_steps = ds.sizes["step"]
    p_new = ds["p_new"].values
    edit_step = ds["edit_step"].values
    retention = np.full(n_steps, np.nan)
    done = np.zeros(n_steps, dtype=np.int64)
    for s in range(1, n_steps):
        so_far = edited & (edit_step >= 1) & (edit_step <= s)
        done[s] = int(so_far.sum())
        if so_far.any():
            retention[s] = np.nanmean(p_new[s, so_far])
    return {
        "edited": done,
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
    if is_spread(ds):
        return _spread_report(ds, out, dpi)
    title = run_title(ds)
    paths = []

    curve = forgetting_curve(ds)
    fig = _forgetting_figure(curve, "step", "number of sequential edits", "efficacy: p(target_new) after its edit",
                             title)
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


def _forgetting_figure(curve: dict, x: str, xlabel: str, efficacy_label: str, title: str):
    """The forgetting curve against ``curve[x]`` (``step`` for one fact a step, ``edited`` for batches)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(curve[x], curve["top1"], "o-", ms=3, label="tracked facts: top-1 accuracy (target_true)")
    ax.plot(curve[x], curve["p_true"], "s-", ms=3, label="tracked facts: mean p(target_true)")
    ax.plot(curve[x][1:], curve["efficacy"][1:], ".", alpha=0.6, label=efficacy_label)
    ax.plot(curve[x], curve["retention"], "--", label="edited so far: mean p(target_new)")
    ax.set(xlabel=xlabel, ylabel="probability / accuracy", ylim=(-0.02, 1.02), title=f"Forgetting curve — {title}")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return fig


def _spread_report(ds: xr.Dataset, out: Path, dpi: int) -> list[Path]:
    """A MEMIT/AlphaEdit run: forgetting curve, predicted vs measured/live per layer, the drift per
    layer against the live change, CounterFact's metrics and the forecast."""
    import matplotlib.pyplot as plt

    title = run_title(ds)
    paths = []
    curve = forgetting_curve(ds)
    fig = _forgetting_figure(curve, "edited", "number of facts edited",
                             "efficacy: the batch's mean p(target_new) after its step", title)
    paths.append(_save(fig, out / "forgetting_curve.png", dpi))

    layers = [int(x) for x in ds["layer"].values]
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(layers)))
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(10, 4.6))
    for li, lay in enumerate(layers):
        pred = ds["predicted_norm"].values[1:, li].ravel()
        for axis, other in ((ax, "measured_norm"), (lx, "live_norm")):
            meas = ds[other].values[1:, li].ravel()
            keep = (pred > 0) & (meas > 0)
            axis.loglog(pred[keep], meas[keep], ".", ms=2, alpha=0.5, color=colours[li], label=f"layer {lay}")
    for axis, what, err in ((ax, "measured on the float64 weights", ds.attrs.get("max_relative_error")),
                            (lx, "live model (keys move above the first layer)",
                             ds.attrs.get("max_live_relative_error"))):
        lo, hi = axis.get_xlim()
        axis.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        axis.set(xlabel="predicted |Δ value| (stored keys, adj, R)", ylabel=f"|Δ value|, {what}",
                 title=f"max relative error {float(err if err is not None else np.nan):.1e}"
                       + (f" (layer {layers[0]})" if axis is lx else ""))
        axis.legend(fontsize=7, markerscale=4)
    fig.suptitle(f"Predicted vs measured change per layer — {title}", fontsize=10)
    paths.append(_save(fig, out / "predicted_vs_measured.png", dpi))

    paths.append(_drift_by_layer_figure(ds, title, out / "drift_by_layer.png", dpi))
    if "eval_step" in ds.dims:
        paths.append(_counterfact_figure(ds, title, out / "counterfact_metrics.png", dpi))
    if "forecast_drift" in ds:
        paths.append(_forecast_figure(ds, title, out / "forecast.png", dpi))
    return paths


def drift_by_layer(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """A spread run's drift per layer for the tracked facts at the last step: predicted
    (|Σ Rᵀadjᵀk| / |W⁰k|, stored keys) and live (the model's own change / |W⁰k|), (layer, fact),
    with the per-layer relative error of predicted against live over the whole run."""
    tracked = np.flatnonzero(ds["role"].values == "tracked")
    value = ds["value_norm"].transpose("layer", "item").values[:, tracked]
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = ds["predicted_norm"].values[-1][:, tracked] / value
        live = ds["live_norm"].values[-1][:, tracked] / value
    return {"layer": ds["layer"].values, "tracked": tracked, "predicted": predicted, "live": live,
            "live_error": np.asarray(ds.attrs.get("max_live_relative_error_by_layer",
                                                  [np.nan] * ds.sizes["layer"]), dtype=float)}


def _drift_by_layer_figure(ds: xr.Dataset, title: str, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    d = drift_by_layer(ds)
    fit = ds.attrs.get("forecast", {})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(d["layer"])))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2))
    for li, lay in enumerate(d["layer"]):
        ax.plot(d["predicted"][li], d["live"][li], "o", ms=3, alpha=0.7, color=colours[li], label=f"layer {lay}")
    lim = np.nanmax(np.concatenate([d["predicted"].ravel(), d["live"].ravel(), [1e-12]]))
    ax.plot([0, lim], [0, lim], "k-", lw=0.8, label="live = predicted")
    ax.set(xlabel="predicted drift |ΣRᵀadjᵀk| / |W⁰k| (store only)", ylabel="live drift |Δ live value| / |W⁰k|",
           title=f"Tracked facts after step {int(ds['step'].values[-1])}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    x = np.arange(len(d["layer"]))
    r2 = np.asarray(fit.get("r2_logp_drop_by_layer", [np.nan] * len(x)), dtype=float)
    rho = np.asarray(fit.get("spearman_logp_drop_by_layer", [np.nan] * len(x)), dtype=float)
    bx.bar(x - 0.2, r2, 0.4, label="R² (layer's drift vs log-p drop)")
    bx.bar(x + 0.2, rho, 0.4, label="Spearman ρ")
    bx.set_xticks(x, [str(v) for v in d["layer"]])
    bx.set(xlabel="layer", ylabel="fit", title="How well each layer's predicted drift explains the loss")
    bx.axhline(0, color="k", lw=0.6)
    bx.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def method_comparison(runs) -> list[dict]:
    """One row per run: what the field compares (CounterFact's scores and fluency at the last
    evaluated step, tracked facts still known, the forecast's fit and collapse steps)."""
    rows = []
    for ds in runs:
        curve = forgetting_curve(ds)
        fit = ds.attrs.get("forecast", {})
        row = {"run": ds.attrs.get("run", ""), "method": ds.attrs.get("method", ""), "title": run_title(ds),
               "edited": int(curve["edited"][-1]), "steps": int(ds["step"].values[-1]),
               "top1": float(curve["top1"][-1]), "p_true": float(curve["p_true"][-1]),
               "r2": float(fit.get("r2_logp_drop", np.nan)), "rho": float(fit.get("spearman_logp_drop", np.nan)),
               "collapse_predicted": fit.get("predicted_collapse_step", NOT_GIVEN),
               "collapse_measured": fit.get("measured_collapse_step", NOT_GIVEN),
               "seconds": float(ds.attrs.get("seconds", np.nan))}
        for key in ("efficacy_score", "paraphrase_score", "neighborhood_score", "fluency"):
            row[key] = float(ds[key].values[-1]) if key in ds else float("nan")
        rows.append(row)
    return rows


NOT_GIVEN = "–"


def write_comparison(runs, folder: str | Path, dpi: int = 150, name: str = "methods_compared.png") -> Path:
    """Several runs (ROME, MEMIT, AlphaEdit, …) on one figure: the tracked facts still known and
    their mean p(true) against the number of facts edited, and CounterFact's last scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    fig, (ax, px, bx) = plt.subplots(1, 3, figsize=(15, 4.4))
    rows = method_comparison(runs)
    for k, ds in enumerate(runs):
        c = forgetting_curve(ds)
        label = f"{ds.attrs.get('method', '')}: {ds.attrs.get('run', '')}"
        ax.plot(c["edited"], c["top1"], "-", marker="o" if len(c["edited"]) <= 60 else None, ms=3, color=f"C{k}",
                label=label)
        px.plot(c["edited"], c["p_true"], "-", color=f"C{k}", label=label)
    ax.set(xlabel="number of facts edited", ylabel="share of tracked facts still known (top-1)", ylim=(-0.02, 1.02),
           title="Forgetting per method")
    px.set(xlabel="number of facts edited", ylabel="tracked facts: mean p(target_true)", ylim=(-0.02, 1.02),
           title="Tracked facts' probability")
    for axis in (ax, px):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    keys = (("efficacy_score", "efficacy"), ("paraphrase_score", "generalization"),
            ("neighborhood_score", "specificity"), ("top1", "tracked known"))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(keys))
    for k, row in enumerate(rows):
        bx.bar(x + (k - (len(rows) - 1) / 2) * width, [row[key] for key, _ in keys], width, color=f"C{k}",
               label=f"{row['method']} ({row['edited']} facts)")
    bx.set_xticks(x, [label for _, label in keys])
    bx.set(ylim=(0, 1.02), ylabel="share (last evaluated step)", title="CounterFact's scores at the end")
    bx.legend(fontsize=7)
    fig.suptitle("Methods side by side", fontsize=10)
    return _save(fig, out / name, dpi)


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
