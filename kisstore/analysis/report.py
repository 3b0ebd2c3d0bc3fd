"""The analysis report: one self-contained HTML page (hvplot/bokeh, inline resources, works
offline) and PNGs of the main figures (hvplot's matplotlib backend, no browser needed)."""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

MAX_HEATMAP_ITEMS = 256
ANGLE_BINS = np.linspace(0.0, 180.0, 91)


def _quiet(_: str) -> None:
    pass


def _setup():
    import holoviews as hv
    import hvplot.pandas  # noqa: F401  (registers .hvplot on DataFrames)
    import hvplot.xarray  # noqa: F401

    warnings.filterwarnings("ignore", module="holoviews")
    warnings.filterwarnings("ignore", module="bokeh")
    hv.extension("bokeh", "matplotlib", logo=False)
    hv.Store.set_current_backend("bokeh")
    return hv


def build_report(
    analyses: dict[str, xr.Dataset],
    table: pd.DataFrame,
    out_dir: str | Path,
    progress: Callable[[str], None] = _quiet,
) -> list[Path]:
    """Write ``index.html``, PNG figures and ``scaling.csv``/``.parquet`` into ``out_dir``.

    ``analyses`` maps model ids to analysis datasets (stored or fresh, lazy is fine);
    ``table`` is ``scaling_table(...)``. Returns the written paths, the HTML first.
    """
    from kisstore.analysis.scaling import export_table

    hv = _setup()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, object]] = []  # (title, holoviews object) for the HTML
    pngs: list[tuple[str, object]] = []  # (file stem, single-frame holoviews object)

    for model, ds in analyses.items():
        progress(f"  figures for {model}")
        ds = _small(ds)
        layers = [int(x) for x in ds["layer"].values]
        heat = {lay: _heatmap(hv, ds, lay) for lay in layers}
        figures.append((f"{model}: P matrix per layer (first {ds.sizes['item']} items)",
                        hv.HoloMap(heat, kdims="layer")))
        pngs.append((f"p_matrix_{model}_layer{layers[0]}", heat[layers[0]]))
        kde = {lay: _kde(hv, ds, lay) for lay in layers}
        figures.append((f"{model}: KDE of off-diagonal entries per layer", hv.HoloMap(kde, kdims="layer")))
        pngs.append((f"kde_{model}_layer{layers[0]}", kde[layers[0]]))
        angles = {lay: _angles(hv, ds, lay) for lay in layers}
        figures.append((f"{model}: whitened vs activation angles per layer", hv.HoloMap(angles, kdims="layer")))
        pngs.append((f"angles_{model}_layer{layers[0]}", angles[layers[0]]))
        conv = _convergence(hv, ds)
        figures.append((f"{model}: convergence of P's kurtosis with the number of items", conv))
        pngs.append((f"convergence_{model}", conv))
        figures.append((f"{model}: top pairs by P (row fact edited, column fact disturbed)", _top_table(hv, ds)))

    if not table.empty:
        kurt = table.hvplot.line(x="layer", y="p_matrix_excess_kurtosis", by="model", title="Excess kurtosis of P by layer",
                                 ylabel="kurtosis of P", width=700, height=350)
        figures.insert(0, ("Kurtosis of P across layers, per model", kurt))
        pngs.append(("kurtosis_by_layer", kurt))
        depth = table.hvplot.line(x="relative_depth", y="p_matrix_excess_kurtosis", by="model", width=700, height=350,
                                  title="Kurtosis of P vs relative depth", xlabel="layer / (n_layers − 1)",
                                  ylabel="kurtosis of P")
        figures.append(("Scaling: kurtosis vs relative depth", depth))
        pngs.append(("scaling_depth", depth))
        per_model = (table[table["n_params"] > 0].groupby(["model", "family"], as_index=False)
                     .agg(n_params=("n_params", "first"), mean_kurtosis=("p_matrix_excess_kurtosis", "mean")))
        if not per_model.empty:
            params = per_model.hvplot.scatter(x="n_params", y="mean_kurtosis", by="family", logx=True, size=80,
                                              hover_cols=["model"], width=700, height=350,
                                              title="Mean kurtosis of P (over layers) vs parameters",
                                              xlabel="parameters (log)", ylabel="mean kurtosis of P")
            figures.append(("Scaling: mean kurtosis vs parameters", params))
            pngs.append(("scaling_params", params))

    paths = [out / "index.html"]
    progress(f"  writing {paths[0]}")
    _write_html(hv, figures, table, paths[0])
    for stem, obj in pngs:
        path = out / f"{stem}.png"
        _save_png(hv, obj, path)
        paths.append(path)
    if not table.empty:
        paths.extend(export_table(table, out / "scaling"))
    return paths


def _small(ds: xr.Dataset) -> xr.Dataset:
    """What the figures need, in memory; heatmaps limited to the first MAX_HEATMAP_ITEMS items."""
    keep = ["p_matrix", "whitened_angle", "activation_angle", "kde", "kde_x", "convergence", "top_p",
            *[v for v in ds.data_vars if v.startswith("top_")]]
    ds = ds[[v for v in keep if v in ds]]
    n = min(ds.sizes["item"], MAX_HEATMAP_ITEMS)
    heat = ds["p_matrix"].isel(item=slice(0, n), item_=slice(0, n))
    rest = ds.drop_vars("p_matrix")
    return xr.merge([rest, heat.rename("p_matrix")], join="outer", compat="override").compute()


def _heatmap(hv, ds: xr.Dataset, layer: int):
    p = ds["p_matrix"].sel(layer=layer).values
    n = p.shape[0]
    lim = float(np.nanquantile(np.abs(p[~np.eye(n, dtype=bool)]), 0.99)) or 1.0
    img = hv.Image(p[::-1], bounds=(0, 0, n, n), kdims=["column item (position)", "row item (position)"],
                   vdims=["P"])
    for backend in ("bokeh", "matplotlib"):
        img = img.opts(cmap="RdBu_r", clim=(-lim, lim), colorbar=True, title=f"P, layer {layer}", backend=backend)
    return img.opts(width=520, height=460, tools=["hover"], backend="bokeh")


def _kde(hv, ds: xr.Dataset, layer: int):
    def x(q):  # a grid per quantity and layer (kde_x); analyses of kisstore 0.1 had one fixed grid
        return ds["kde_x"].sel(layer=layer, quantity=q).values if "kde_x" in ds else ds["grid"].values

    unitless = [q for q in ds["quantity"].values if not str(q).endswith("_angle")]  # angles: degrees
    curves = [hv.Curve((x(q), ds["kde"].sel(layer=layer, quantity=q).values), kdims=["value"], vdims=["density"],
                       label=str(q)) for q in unitless]
    overlay = hv.Overlay(curves).opts(title=f"KDE (Scott), layer {layer}")
    return overlay.opts(width=700, height=350, legend_position="top_right", backend="bokeh")


def _angles(hv, ds: xr.Dataset, layer: int):
    hists = []
    for name, label in (("whitened_angle", "whitened"), ("activation_angle", "activation")):
        a = ds[name].sel(layer=layer).values
        counts, edges = np.histogram(a[~np.eye(a.shape[0], dtype=bool)], bins=ANGLE_BINS, density=True)
        hists.append(hv.Histogram((edges, counts), kdims=["angle (degrees)"], vdims=["density"], label=label).opts(alpha=0.5))
    return hv.Overlay(hists).opts(title=f"Angles between keys, layer {layer}").opts(
        width=700, height=350, backend="bokeh")


def _convergence(hv, ds: xr.Dataset):
    kurt = ds["convergence"].sel(quantity="p_matrix", stat="excess_kurtosis")
    curves = [hv.Curve((kurt["n_items"].values, kurt.sel(layer=lay).values), kdims=["items n"], vdims=["kurtosis of P"],
                       label=f"layer {int(lay)}") for lay in kurt["layer"].values]
    return hv.Overlay(curves).opts(title="Kurtosis of P for the first n items").opts(
        width=700, height=350, logx=True, show_legend=len(curves) <= 12, backend="bokeh")


def _top_table(hv, ds: xr.Dataset):
    rows = []
    for lay in ds["layer"].values:
        t = ds.sel(layer=lay)
        for r in range(t.sizes["rank"]):
            rows.append({
                "layer": int(lay), "rank": r + 1, "P": round(float(t["top_p"].values[r]), 4),
                "row item": int(t["top_item"].values[r]),
                "row fact": _fact(t, r, ""), "column item": int(t["top_item_"].values[r]),
                "column fact": _fact(t, r, "_"),
            })
    return hv.Table(pd.DataFrame(rows)).opts(width=1000, height=400, backend="bokeh")


def _fact(t: xr.Dataset, r: int, suffix: str) -> str:
    def get(field):
        name = f"top_{field}{suffix}"
        return str(t[name].values[r]) if name in t else ""

    prompt = get("prompt").replace("{}", get("subject")) if get("prompt") else get("subject")
    return f"{prompt} → {get('target_true')} (new: {get('target_new')})"


def _write_html(hv, figures, table: pd.DataFrame, path: Path) -> None:
    """A plain bokeh document (bokeh JS inlined, nothing fetched): a HoloMap becomes one
    figure per frame plus a layer selector that shows one of them."""
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models import Div
    from bokeh.resources import INLINE

    items = [Div(text="<h1>kisstore analysis report</h1><p>Statistics over the N(N−1) off-diagonal "
                      "entries; P<sub>ij</sub> = k<sub>i</sub><sup>T</sup>C<sup>−1</sup>k<sub>j</sub> / "
                      "k<sub>i</sub><sup>T</sup>C<sup>−1</sup>k<sub>i</sub>. See docs/quantities.md for "
                      "how to read each figure.</p>", width=1000)]
    for title, obj in figures:
        items.append(Div(text=f"<h2>{html.escape(title)}</h2>", width=1000))
        items.append(_bokeh(hv, obj))
    if not table.empty:
        cols = ["model", "family", "n_params", "layer", "relative_depth", "p_matrix_mean", "p_matrix_std",
                "p_matrix_excess_kurtosis", "whitened_cos_excess_kurtosis", "activation_cos_excess_kurtosis"]
        items.append(Div(text="<h2>Scaling table (full table: scaling.csv, scaling.parquet)</h2>", width=1000))
        items.append(_bokeh(hv, hv.Table(table[cols].round(4)).opts(width=1000, height=300)))
    text = file_html(column(*items), INLINE, title="kisstore analysis report")
    # panel (imported by hvplot) adds a <script src> for a shim no bokeh model here needs;
    # a self-contained page fetches nothing, so drop every external script tag
    text = re.sub(r'<script[^>]*\bsrc="[^"]*"[^>]*>\s*</script>', "", text)
    path.write_text(text, encoding="utf-8")


def _bokeh(hv, obj):
    """Render to a bokeh model; a HoloMap gets a Select widget toggling its frames."""
    from bokeh.layouts import column
    from bokeh.models import CustomJS, Select

    if not isinstance(obj, hv.HoloMap):
        return hv.render(obj, backend="bokeh")
    keys = [str(k[0] if isinstance(k, tuple) else k) for k in obj.keys()]
    figs = [hv.render(obj[k], backend="bokeh") for k in obj.keys()]
    for i, fig in enumerate(figs):
        fig.visible = i == 0
    select = Select(title=obj.kdims[0].name, value=keys[0], options=keys, width=200)
    select.js_on_change("value", CustomJS(args={"figs": figs, "keys": keys}, code=(
        "for (let i = 0; i < figs.length; i++) { figs[i].visible = (keys[i] === cb_obj.value); }")))
    return column(select, *figs)


def _save_png(hv, obj, path: Path) -> None:
    hv.save(obj, str(path), backend="matplotlib", fmt="png", dpi=100)
