"""The edit runs of a store side by side: CounterFact's metrics, the forecast's fit, the collapse step.

    python scripts/edit_findings.py cf.zarr [--png docs/img/edit_methods.png]

Prints one Markdown table of every run under /edits (the numbers docs/editing.md quotes) and,
with --png, draws per method the measured share of tracked facts still known against the
store-based forecast, on a common x axis: the number of facts edited so far (a MEMIT or AlphaEdit
step edits a whole batch, a ROME step one fact).
"""

from __future__ import annotations

import argparse

import numpy as np
import xarray as xr


def edits_done(ds: xr.Dataset) -> np.ndarray:
    """Facts edited by each step of the run (the ``edit_step`` coordinate counts them)."""
    done = ds["edit_step"].values[ds["role"].values == "edited"]
    return np.array([int(np.sum((done >= 1) & (done <= s))) for s in ds["step"].values])


def summary(name: str, ds: xr.Dataset) -> dict:
    f = ds.attrs.get("forecast", {})
    row = {"run": name, "method": ds.attrs.get("method"), "edits": int((ds["role"].values == "edited").sum()),
           "steps": int(ds["step"].values[-1]), "tracked": int((ds["role"].values == "tracked").sum()),
           "hours": float(np.nansum(ds["seconds"].values)) / 3600}
    if "eval_step" in ds.dims:
        for k in ("efficacy_score", "paraphrase_score", "neighborhood_score", "fluency"):
            row[k] = (float(ds[k].values[0]), float(ds[k].values[-1]))
    row["retention_end"] = float(ds["measured_retention"].values[-1])
    done = edits_done(ds)

    def at_edits(step: int) -> str:
        return "not reached" if step < 0 else f"{done[list(ds['step'].values).index(step)]} (step {step})"

    for k in ("r2_logp_drop", "spearman_logp_drop", "auc_forgotten", "heldout_accuracy", "heldout_majority_accuracy"):
        row[k] = f.get(k, float("nan"))
    row["measured_collapse"] = at_edits(f.get("measured_collapse_step", -1))
    row["predicted_collapse"] = at_edits(f.get("predicted_collapse_step", -1))
    stat = f.get("predicted_collapse_step_statistical", -1)
    per = done[-1] / max(int(ds["step"].values[-1]), 1)  # facts a step
    row["statistical_collapse"] = "not reached" if stat < 0 else f"≈{round(stat * per)} (step {stat})"
    return row


def table(rows: list[dict]) -> str:
    head = ("| run | edits (steps) | efficacy 0 → end | paraphrase 0 → end | neighborhood 0 → end | fluency 0 → end "
            "| tracked still known at end | R² | Spearman ρ | AUC forgotten | held-out acc. (majority) "
            "| collapse measured | predicted (drift) | predicted (P statistics) | hours of edit steps |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        def pair(k, r=r):
            return f"{r[k][0]:.3f} → {r[k][1]:.3f}" if k in r else "–"
        lines.append(f"| {r['method']} | {r['edits']} ({r['steps']}) | {pair('efficacy_score')} | {pair('paraphrase_score')} "
                     f"| {pair('neighborhood_score')} | {pair('fluency')} | {r['retention_end']:.2f} "
                     f"| {r['r2_logp_drop']:.3f} | {r['spearman_logp_drop']:.3f} | {r['auc_forgotten']:.3f} "
                     f"| {r['heldout_accuracy']:.2f} ({r['heldout_majority_accuracy']:.2f}) | {r['measured_collapse']} "
                     f"| {r['predicted_collapse']} | {r['statistical_collapse']} | {r['hours']:.1f} |")
    return "\n".join(lines)


def draw(runs: dict[str, xr.Dataset], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, ds) in enumerate(runs.items()):
        c, label = f"C{i}", ds.attrs.get("method", name)
        x = edits_done(ds)
        axes[0].plot(x, ds["measured_retention"].values, "-o", color=c, ms=3, label=f"{label}: measured")
        axes[0].plot(x, ds["forecast_retention"].values, "--", color=c, label=f"{label}: forecast (drift < d_c)")
        tracked = ds["role"].values == "tracked"
        xd, yd = ds["forecast_drift"].values[1:, tracked].ravel(), ds["logp_true_drop"].values[1:, tracked].ravel()
        keep = xd > 0  # a log axis; a tracked fact's drift is 0 only before the first edit
        axes[1].scatter(xd[keep], yd[keep], s=4, alpha=0.35, color=c,
                        label=f"{label}: ρ = {ds.attrs['forecast'].get('spearman_logp_drop', float('nan')):.2f}")
    thr = next(iter(runs.values())).attrs["forecast"].get("collapse_threshold", 0.5)
    axes[0].axhline(thr, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="facts edited", ylabel="tracked facts still known (top-1)", ylim=(0, 1.05),
                title="Forgetting: measured vs forecast from the store")
    axes[0].legend(fontsize=7)
    axes[1].set(xscale="log", xlabel="predicted drift |Δv| / |v| (keys, C, residuals only)",
                ylabel="measured drop of log p(true) (nats)", title="Per tracked fact and step")
    axes[1].legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--png", help="write the side-by-side figure here")
    ap.add_argument("--runs", nargs="*", help="run names (default: every run under /edits)")
    a = ap.parse_args()
    tree = xr.open_datatree(a.store, engine="zarr")
    names = a.runs or sorted(tree["edits"].children)
    runs = {n: tree[f"edits/{n}"].ds.load() for n in names}
    print(table([summary(n, ds) for n, ds in runs.items()]))
    if a.png:
        draw(runs, a.png)
        print(f"wrote {a.png}")


if __name__ == "__main__":
    main()
