"""The report's PNG figures, drawn with matplotlib (Agg: no display, no browser): titles, axis
labels with units, colour bars, ``dpi`` chosen by the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kisstore.analysis import report_data as rd

WIDE = (8.0, 4.2)  # inches
SQUARE = (6.2, 5.2)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _symlog_axis(ax, values) -> None:
    ax.set_yscale("symlog", linthresh=1.0, linscale=0.5)
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size:
        ticks = [v for v in rd.SYMLOG_TICKS if min(finite.min(), 0) - 1e-9 <= v <= finite.max() * 1.5 + 1]
        ax.set_yticks(ticks, [f"{v:g}" for v in ticks])


def kurtosis_png(curves: list[tuple[str, pd.DataFrame, bool]], path: Path, dpi: int,
                 layers_of: int | None = None) -> Path:
    """Excess kurtosis of P vs relative depth (symlog), each curve with its CI band where known,
    and the paper's GPT-2-small reference. ``layers_of``: n_layers for a top axis in layer numbers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=WIDE)
    ref = rd.paper_reference()
    ax.plot(ref["relative_depth"], ref["value"], ls="--", color="0.45", marker="s", ms=3,
            label="GPT-2 small (paper, ≈)")
    allv = [ref["value"].to_numpy()]
    for label, df, dashed in curves:
        line, = ax.plot(df["relative_depth"], df["value"], marker="o", ms=3, ls=":" if dashed else "-", label=label)
        if df["low"].notna().any():
            ax.fill_between(df["relative_depth"], df["low"], df["high"], color=line.get_color(), alpha=0.2, lw=0,
                            label=f"{label}: 95 % CI")
            allv.append(df["high"].to_numpy())
        allv.append(df["value"].to_numpy())
    _symlog_axis(ax, np.concatenate(allv))
    ax.set_xlabel("relative depth, layer / (n_layers − 1)")
    ax.set_ylabel("excess kurtosis of P (symlog)")
    ax.set_title("Excess kurtosis of P's off-diagonal entries by depth")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    if layers_of and layers_of > 1:
        top = ax.secondary_xaxis("top", functions=(lambda d: d * (layers_of - 1), lambda lay: lay / (layers_of - 1)))
        top.set_xlabel("layer")
    fig.text(0.01, 0.005, rd.PAPER_NOTE, fontsize=5.5, color="0.35")
    return _save(fig, path, dpi)


def heatmap_png(p: np.ndarray, model: str, layer: int, path: Path, dpi: int) -> Path:
    plt = _plt()
    lim = rd.heat_limit(p)
    fig, ax = plt.subplots(figsize=SQUARE)
    im = ax.imshow(p, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, shrink=0.85)
    cb.set_label("P (dimensionless; colour clipped at the 99th percentile of |P|)", fontsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("column item j (fact disturbed), position")
    ax.set_ylabel("row item i (fact edited), position")
    ax.set_title(f"{model}: P, layer {layer} ({p.shape[0]} items)")
    return _save(fig, path, dpi)


def kde_png(curves, model: str, layer: int, path: Path, dpi: int) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=WIDE)
    for label, x, y, outside in curves:
        extra = f" ({100 * outside:.1f} % outside the grid)" if outside is not None else ""
        ax.plot(x, y, label=label + extra)
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-4, min((np.nanmax(c[2]) for c in curves), default=1) * 1e-4))
    ax.set_xlabel("off-diagonal value (dimensionless)")
    ax.set_ylabel("density (log)")
    ax.set_title(f"{model}: Gaussian KDE (Scott) of the off-diagonal entries, layer {layer}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")  # a fixed place: "best" scans every point (slow)
    return _save(fig, path, dpi)


def angles_png(hists, model: str, layer: int, path: Path, dpi: int) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=WIDE)
    for i, (label, edges, dens) in enumerate(hists):
        ax.stairs(dens, edges, fill=True, alpha=0.3, color=f"C{i}", label=label)
        ax.stairs(dens, edges, lw=1.2, color=f"C{i}")
    ax.axvline(90, color="0.3", lw=0.8, ls="--")
    ax.set_xlim(0, 180)
    ax.set_xlabel("angle between keys (degrees; 90° = orthogonal)")
    ax.set_ylabel("density (1/degree)")
    ax.set_title(f"{model}: whitened vs activation angles, layer {layer}")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path, dpi)


def convergence_png(layers: np.ndarray, sizes: np.ndarray, kurt: np.ndarray, model: str, path: Path,
                    dpi: int, bounds: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    plt = _plt()
    from matplotlib import cm, colors

    fig, ax = plt.subplots(figsize=WIDE)
    norm = colors.Normalize(vmin=layers.min(), vmax=max(layers.max(), layers.min() + 1))
    cmap = cm.viridis
    for li, lay in enumerate(layers):
        ax.plot(sizes, kurt[li], color=cmap(norm(lay)), marker="o", ms=2, lw=1)
        if bounds is not None:  # each point's bootstrap interval, a thin bar in the line's colour
            ax.vlines(sizes, bounds[0][li], bounds[1][li], color=cmap(norm(lay)), lw=0.6, alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    _symlog_axis(ax, kurt)
    from matplotlib.ticker import MaxNLocator

    cb = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax)
    cb.locator = MaxNLocator(integer=True)
    cb.update_ticks()
    cb.set_label("layer")
    ax.set_xlabel("number of items n (the first n)")
    ax.set_ylabel("excess kurtosis of P (symlog)")
    ax.set_title(f"{model}: convergence of P's excess kurtosis with n"
                 + (" (bars: 95 % bootstrap CI)" if bounds is not None else ""))
    ax.grid(alpha=0.3)
    return _save(fig, path, dpi)


def scaling_png(per_model: pd.DataFrame, path: Path, dpi: int) -> Path:
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=WIDE)
    for family, grp in per_model.groupby("family"):
        ax.scatter(grp["n_params"], grp["mean_kurtosis"], s=40, label=family)
        for _, r in grp.iterrows():
            ax.annotate(r["model"], (r["n_params"], r["mean_kurtosis"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: rd.param_label(v)))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("mean excess kurtosis of P over layers")
    ax.set_title("Scaling: excess kurtosis of P vs model size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="family", loc="upper left")
    return _save(fig, path, dpi)
