"""What the report draws, as plain tables: kurtosis curves, fact texts, top pairs, the symlog
axis and parameter labels. Pure functions (xarray/numpy in, pandas/numpy out), no plotting, so
the HTML page and the PNGs draw exactly the same numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from kisstore.errors import InputError
from kisstore.layers import parse_layers

# P's excess kurtosis for GPT-2 small, layers 0-11, read off the figure data in the paper
# repository's notebook (Hu et al., "Knowledge in Superposition", AAAI 2025); approximate.
PAPER_GPT2_SMALL = (72.7, 24.4, 28.8, 29.2, 26.6, 20.0, 15.2, 10.7, 9.7, 9.7, 8.3, 7.7)
PAPER_NOTE = ("dashed grey: GPT-2 small from the paper (Hu et al., AAAI 2025), values read off the paper "
              "repository's notebook (≈, layers 0–11 at relative depth layer / 11)")
PAIR_SETS = ("all", "different_token", "different_subject", "same_relation", "different_relation")
PAIR_FLAGS = (("top_same_token", "same token"), ("top_same_subject", "same subject"),
              ("top_same_relation", "same relation"))
CURVE_QUANTITIES = ("p_matrix", "whitened_cos", "activation_cos")  # same x axis (a cosine-like scale)
QUANTITY_LABELS = {"p_matrix": "P", "whitened_cos": "whitened cosine", "activation_cos": "activation cosine",
                   "whitened_angle": "whitened angle", "activation_angle": "activation angle"}


def kurtosis_stat(ds: xr.Dataset) -> str:
    """The stat name of excess kurtosis: ``excess_kurtosis`` (schema 2) or ``kurtosis`` (0.1 analyses)."""
    stats = [str(s) for s in ds["stat"].values] if "stat" in ds.coords else []
    return "excess_kurtosis" if "excess_kurtosis" in stats else "kurtosis"


def kurtosis_column(table: pd.DataFrame, quantity: str = "p_matrix") -> str | None:
    """The scaling-table column of a quantity's excess kurtosis, under either name."""
    for name in (f"{quantity}_excess_kurtosis", f"{quantity}_kurtosis"):
        if name in table.columns:
            return name
    return None


def symlog(y, linthresh: float = 1.0) -> np.ndarray:
    """sign(y)·log10(1 + |y|/linthresh): logarithmic for |y| ≫ linthresh, linear near 0, defined
    for negative values (excess kurtosis goes down to −2)."""
    y = np.asarray(y, dtype=np.float64)
    return np.sign(y) * np.log10(1.0 + np.abs(y) / linthresh)


SYMLOG_TICKS = (-2, -1, 0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def symlog_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """(position on the symlog axis, label) for the round values between ``lo`` and ``hi`` (data units)."""
    lo, hi = min(lo, 0.0), max(hi, 1.0)
    return [(float(symlog(v)), f"{v:g}") for v in SYMLOG_TICKS if lo - 1e-9 <= v <= hi * 1.5 + 1]


def param_label(n: float) -> str:
    """135M, 1.3B, 12k: a parameter count as people write it."""
    n = float(n)
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            v = n / size
            return f"{v:.1f}{suffix}" if v < 10 and abs(v - round(v)) > 0.05 else f"{v:.0f}{suffix}"
    return f"{n:.0f}"


def representative_layers(layers: list[int]) -> list[int]:
    """First, middle and last of the analysed layers."""
    layers = sorted(layers)
    return sorted({layers[0], layers[len(layers) // 2], layers[-1]})


def report_layers(ds: xr.Dataset, spec: str | None, model: str = "") -> list[int]:
    """The layers whose per-layer figures the report draws: ``spec`` in --layers syntax, resolved
    against the model's ``n_layers``, or first/middle/last of the analysed layers when None."""
    analysed = [int(x) for x in ds["layer"].values]
    if spec is None:
        return representative_layers(analysed)
    n_layers = int(ds.attrs.get("n_layers", max(analysed) + 1))
    wanted = parse_layers(spec, n_layers)
    missing = [x for x in wanted if x not in analysed]
    if missing:
        raise InputError(f"--report-layers {spec!r}: layer(s) {', '.join(map(str, missing))} of model "
                         f"{model!r} were not analysed (analysed: {', '.join(map(str, analysed))})")
    return wanted


def kurtosis_curve(ds: xr.Dataset, quantity: str = "p_matrix") -> pd.DataFrame:
    """layer, relative_depth, value and (where ``stats_ci`` holds them) low/high of a quantity's
    excess kurtosis; low/high are NaN without ``stats_ci``."""
    stat = kurtosis_stat(ds)
    value = ds["stats"].sel(quantity=quantity, stat=stat).values.astype(np.float64)
    low = high = np.full_like(value, np.nan)
    if ("stats_ci" in ds and quantity in ds["stats_ci"]["quantity"].values
            and stat in ds["stats_ci"]["stat"].values):
        ci = ds["stats_ci"].sel(quantity=quantity, stat=stat)
        low, high = ci.sel(bound="low").values.astype(np.float64), ci.sel(bound="high").values.astype(np.float64)
    layers = ds["layer"].values.astype(int)
    depth = (ds["relative_depth"].values.astype(np.float64) if "relative_depth" in ds.coords
             else layers / max(int(ds.attrs.get("n_layers", layers.max() + 1)) - 1, 1))
    return pd.DataFrame({"layer": layers, "relative_depth": depth, "value": value, "low": low, "high": high})


def paper_reference() -> pd.DataFrame:
    layers = np.arange(len(PAPER_GPT2_SMALL))
    return pd.DataFrame({"layer": layers, "relative_depth": layers / (len(layers) - 1),
                         "value": np.array(PAPER_GPT2_SMALL)})


def pair_set_curves(ds: xr.Dataset) -> pd.DataFrame | None:
    """P's excess kurtosis per layer for each pair set of ``pair_stats`` (None without it)."""
    if "pair_stats" not in ds:
        return None
    ps = ds["pair_stats"]
    stat = "excess_kurtosis" if "excess_kurtosis" in ps["stat"].values else "kurtosis"
    sel = ps.sel(quantity="p_matrix", stat=stat) if "quantity" in ps.dims else ps.sel(stat=stat)
    rows = []
    for s in sel["pair_set"].values:
        for lay, v in zip(ds["layer"].values, sel.sel(pair_set=s).values, strict=True):
            rows.append({"pair_set": str(s), "layer": int(lay), "value": float(v)})
    return pd.DataFrame(rows)


def item_facts(ds: xr.Dataset, items: xr.Dataset | None = None) -> pd.DataFrame:
    """Per item position of ``ds``'s item dim: case_id, subject, prompt (the subject filled in),
    relation_id, target_true. Taken from coordinates on the item dim when the analysis has them,
    else from ``items`` (the store's /items), else from the top-pair arrays (items that never
    appear in a top pair then show only their case id)."""
    case_ids = np.asarray(ds["item"].values)
    fields = ("subject", "prompt", "relation_id", "target_true")
    aliases = {"relation_id": ("relation_id", "relation"), "target_true": ("target_true", "target")}
    cols: dict[str, list[str]] = {}
    for f in fields:
        for name in aliases.get(f, (f,)):
            if f not in cols and name in ds.coords and ds[name].dims == ("item",):
                cols[f] = [str(v) for v in ds[name].values]
    if items is not None and len(cols) < len(fields):
        present = set(np.asarray(items["item"].values).tolist())
        if all(c in present for c in case_ids.tolist()):
            sub = items.sel(item=case_ids)
            for f in fields:
                if f not in cols and f in sub:
                    cols[f] = [str(v) for v in sub[f].values]
    if len(cols) < len(fields):
        known: dict[int, dict[str, str]] = {}
        for suffix in ("", "_"):
            if f"top_item{suffix}" not in ds:
                continue
            ids = np.asarray(ds[f"top_item{suffix}"].values).ravel()
            for f in fields:
                name = f"top_{f}{suffix}"
                if name in ds:
                    for c, v in zip(ids, np.asarray(ds[name].values).ravel(), strict=True):
                        known.setdefault(int(c), {})[f] = str(v)
        for f in fields:
            if f not in cols:
                cols[f] = [known.get(int(c), {}).get(f, "") for c in case_ids]
    out = pd.DataFrame({"case_id": case_ids, **cols})
    out["fact"] = [fact_text(s, p, t) for s, p, t in zip(out["subject"], out["prompt"], out["target_true"],
                                                           strict=True)]
    return out


def fact_text(subject: str, prompt: str, target: str = "") -> str:
    """'The mother tongue of Danielle Darrieux is → French' (the prompt with its subject filled in)."""
    text = prompt.replace("{}", subject) if prompt else subject
    return f"{text} → {target}" if target else text


def top_pairs_frame(ds: xr.Dataset) -> pd.DataFrame:
    """One row per (layer, rank): P, both facts' case id, subject and full prompt text, and the
    same-token/subject/relation flags where the analysis has them."""
    n_rank = ds.sizes["rank"]
    rows = []
    values = {name: np.asarray(ds[name].values) for name in ds.data_vars
              if name.startswith("top_") and ds[name].dims == ("layer", "rank")}

    def get(name, li, r):
        return str(values[name][li, r]) if name in values else ""

    for li, lay in enumerate(ds["layer"].values):
        for r in range(n_rank):
            row = {"layer": int(lay), "rank": r + 1, "P": float(values["top_p"][li, r])}
            for side, suffix in (("row", ""), ("column", "_")):
                row[f"{side} case"] = int(values[f"top_item{suffix}"][li, r])
                row[f"{side} subject"] = get(f"top_subject{suffix}", li, r)
                row[f"{side} fact"] = fact_text(row[f"{side} subject"], get(f"top_prompt{suffix}", li, r),
                                                get(f"top_target_true{suffix}", li, r))
                row[f"{side} relation"] = get(f"top_relation_id{suffix}", li, r)
            for name, label in PAIR_FLAGS:
                if name in values:
                    row[label] = bool(values[name][li, r])
            rows.append(row)
    return pd.DataFrame(rows)


def kde_curves(ds: xr.Dataset, layer: int) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """(label, x, density, share outside the grid or None) of the cosine-scale quantities' KDEs;
    x from ``kde_x`` (per-quantity grid) when present, else the shared ``grid`` coordinate."""
    out = []
    quantities = [str(q) for q in ds["kde"]["quantity"].values]
    for q in quantities:
        if q not in CURVE_QUANTITIES:
            continue  # angles have their own histogram figure (degrees, not this axis)
        y = ds["kde"].sel(layer=layer, quantity=q).values.astype(np.float64)
        x = (ds["kde_x"].sel(layer=layer, quantity=q).values if "kde_x" in ds else ds["grid"].values)
        outside = float(ds["kde_outside"].sel(layer=layer, quantity=q).values) if "kde_outside" in ds else None
        out.append((QUANTITY_LABELS.get(q, q), np.asarray(x, np.float64), y, outside))
    return out


ANGLE_BINS = np.linspace(0.0, 180.0, 91)


def angle_histograms(ds: xr.Dataset, layer: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, bin edges, density) of the off-diagonal whitened and activation angles."""
    out = []
    for name, label in (("whitened_angle", "whitened"), ("activation_angle", "activation")):
        if name not in ds:
            continue
        a = np.asarray(ds[name].sel(layer=layer).values)
        counts, edges = np.histogram(a[~np.eye(a.shape[0], dtype=bool)], bins=ANGLE_BINS, density=True)
        out.append((label, edges, counts))
    return out


def convergence_curves(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layers, n_items, kurtosis[layer, n]) of P for the first n items."""
    kurt = ds["convergence"].sel(quantity="p_matrix", stat=kurtosis_stat(ds))
    kurt = kurt.transpose("layer", "n_items")
    return ds["layer"].values.astype(int), kurt["n_items"].values.astype(int), kurt.values.astype(np.float64)


def convergence_bounds(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(low, high)[layer, n] of the convergence curve's bootstrap interval, or None (no
    ``convergence_ci``: --bootstrap 0 or a store analysed before kisstore computed it)."""
    if "convergence_ci" not in ds:
        return None
    ci = ds["convergence_ci"].sel(stat="excess_kurtosis").transpose("layer", "n_items", "bound")
    v = ci.values.astype(np.float64)
    return v[..., 0], v[..., 1]


def heat_limit(p: np.ndarray) -> float:
    """Symmetric colour limit: the 99th percentile of |P| off the diagonal (the diagonal is 1)."""
    off = np.abs(p[~np.eye(p.shape[0], dtype=bool)])
    lim = float(np.nanquantile(off, 0.99)) if off.size else 1.0
    return lim if lim > 0 else 1.0
