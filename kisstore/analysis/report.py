"""The analysis report: one self-contained HTML page (bokeh figures with its JavaScript inlined,
plain HTML tables; nothing is fetched, it opens offline) and publication-quality PNGs
(matplotlib, ``report_png``). What is drawn comes from ``report_data``, so both agree.

The page is laid out for a 1400 px wide window: the kurtosis-by-depth figure across the top,
then per model a layer selector driving the P heatmap (hover names both facts), the KDE, the
angle histograms and the top-pairs table of that layer."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from kisstore.analysis import report_data as rd
from kisstore.analysis import report_png

MAX_HEATMAP_ITEMS = 256
PAGE = 1320  # px: the figure area of a 1400 px window (20 px margins, room for a scroll bar)
DEFAULT_DPI = 200
# parameter-count ticks (135M, 1.3B) in the browser: report_data.param_label's rule in JavaScript
PARAM_TICK_JS = """
const a = Math.abs(tick);
for (const [s, u] of [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'k']]) {
  if (a >= s) { const v = tick / s;
    return (v < 10 && Math.abs(v - Math.round(v)) > 0.05 ? v.toFixed(1) : v.toFixed(0)) + u; }
}
return tick.toFixed(0);"""


def _quiet(_: str) -> None:
    pass


def build_report(
    analyses: dict[str, xr.Dataset],
    table: pd.DataFrame,
    out_dir: str | Path,
    progress: Callable[[str], None] = _quiet,
    compare: dict[str, xr.Dataset] | None = None,
    compare_name: str | None = None,
    *,
    items: xr.Dataset | None = None,
    layers: str | None = None,
    dpi: int = DEFAULT_DPI,
    name: str | None = None,
) -> list[Path]:
    """Write ``index.html``, PNG figures and ``scaling.csv``/``.parquet`` into ``out_dir``.

    ``analyses`` maps model ids to analysis datasets (stored or fresh, lazy is fine);
    ``table`` is ``scaling_table(...)``. ``compare`` (model id → a second analysis of the same
    store, called ``compare_name``) puts its kurtosis curves and top pairs beside the first's.
    ``items`` (the store's /items) gives the heatmap hovers every fact's text when the analysis
    has no subject/prompt coordinates. ``layers`` (--layers syntax) picks the layers whose
    per-layer figures are drawn (default first, middle and last); ``dpi`` is the PNGs'.
    Returns the written paths, the HTML first.
    """
    from kisstore.analysis.scaling import export_table

    if int(dpi) < 20 or int(dpi) > 1200:
        from kisstore.errors import InputError

        raise InputError(f"--dpi must lie in 20..1200, got {dpi}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    compare = compare or {}
    name = name or _name(next(iter(analyses.values()), None), "this analysis")
    compare_name = compare_name or (_name(next(iter(compare.values())), "compared") if compare else None)
    chosen = {m: rd.report_layers(ds, layers, m) for m, ds in analyses.items()}
    page = _Page()
    pngs: list[Path] = []

    progress("  kurtosis by depth")
    curves = [(f"{m}" + (f" [{name}]" if compare else ""), rd.kurtosis_curve(ds), False)
              for m, ds in analyses.items()]
    curves += [(f"{m} [{compare_name}]", rd.kurtosis_curve(ds), True) for m, ds in compare.items()]
    n_layers = {int(ds.attrs.get("n_layers", ds.sizes["layer"])) for ds in analyses.values()}
    top_axis = n_layers.pop() if len(analyses) == 1 and len(n_layers) == 1 else None
    page.section("Excess kurtosis of P by depth", _kurtosis_figure(curves, top_axis),
                 note=rd.PAPER_NOTE + ". Symlog axis: logarithmic above 1, linear through 0 (excess kurtosis "
                 "can be negative, −2 at least). Shaded: bootstrap confidence bands where the analysis "
                 "stores stats_ci. Hover a point for its layer and value.")
    pngs.append(report_png.kurtosis_png(curves, out / "kurtosis_by_layer.png", dpi, top_axis))

    sets = {m: rd.pair_set_curves(ds) for m, ds in analyses.items()}
    for m, frame in sets.items():
        if frame is not None:
            page.section(f"{m}: P's excess kurtosis by pair set", _pair_set_figure(frame),
                         note="pair_stats: the statistic over all off-diagonal pairs and over subsets "
                         "(pairs whose keys sit on different tokens, different subjects, the same or "
                         "different relations).")

    _scaling_section(page, table, out, dpi, pngs)

    for gi, (model, full) in enumerate(analyses.items()):
        progress(f"  figures for {model} (layers {', '.join(map(str, chosen[model]))})")
        group = f"g{gi}"
        ds = _small(full, chosen[model])
        other = compare.get(model)
        other_ds = _small(other, [x for x in chosen[model] if x in other["layer"].values]) if other is not None else None
        facts = rd.item_facts(ds, items)
        page.model_header(model, group, chosen[model], _settings(full, name, other, compare_name))
        heat, kde, ang = [], [], []
        for lay in chosen[model]:
            p = ds["p_matrix"].sel(layer=lay).values
            heat.append(_heatmap_figure(p, facts, model, lay, f"{group}|heat|{lay}"))
            kde.append(_kde_figure(rd.kde_curves(ds, lay), model, lay, f"{group}|kde|{lay}"))
            hists = rd.angle_histograms(full, lay)
            ang.append(_angles_figure(hists, model, lay, f"{group}|angles|{lay}"))
            page.layer_models(group, lay, [f"{group}|{k}|{lay}" for k in ("heat", "kde", "angles")])
            stem = f"{model}_layer{lay}"
            pngs.append(report_png.heatmap_png(p, model, lay, out / f"p_matrix_{stem}.png", dpi))
            pngs.append(report_png.kde_png(rd.kde_curves(ds, lay), model, lay, out / f"kde_{stem}.png", dpi))
            pngs.append(report_png.angles_png(hists, model, lay, out / f"angles_{stem}.png",
                                              dpi))
        page.figure_row(group, [_stack(heat), _stack([*kde, *ang])],
                        note=f"P heatmap of the first {ds.sizes['item']} items (row i = fact edited, column j = "
                        "fact disturbed; hover a cell for both facts); right: Gaussian KDE (Scott) of the "
                        "off-diagonal entries on a log density axis, and the whitened vs activation angle "
                        "histograms (translucent; 90° = orthogonal).")
        if "convergence" in ds:
            lays, sizes, kurt = rd.convergence_curves(ds)
            bounds = rd.convergence_bounds(ds)
            page.section(f"{model}: convergence of P's excess kurtosis with the number of items",
                         _convergence_figure(lays, sizes, kurt, model, bounds),
                         note="Each line is one layer, coloured by depth (colour bar); hover a point for its layer"
                         + (" and its 95 % bootstrap interval (the bars: the first n items resampled)."
                            if bounds is not None else "."))
            pngs.append(report_png.convergence_png(lays, sizes, kurt, model, out / f"convergence_{model}.png", dpi,
                                                   bounds))
        tables = [(name, rd.top_pairs_frame(ds))]
        if other_ds is not None:
            tables.append((compare_name, rd.top_pairs_frame(other_ds)))
        page.top_pairs(group, model, chosen[model], tables)

    if not table.empty:
        page.scaling_table(table)
    paths = [out / "index.html"]
    progress(f"  writing {paths[0]}")
    paths[0].write_text(page.render(), encoding="utf-8")
    paths.extend(pngs)
    if not table.empty:
        paths.extend(export_table(table, out / "scaling"))
    return paths


def _name(ds: xr.Dataset | None, default: str) -> str:
    if ds is None:
        return default
    for key in ("analysis_name", "name"):
        if ds.attrs.get(key):
            return str(ds.attrs[key])
    return default


def _settings(ds: xr.Dataset, name: str, other: xr.Dataset | None, other_name: str | None) -> str:
    def one(d, n):
        lays = [int(x) for x in d["layer"].values]
        return (f"<b>{html.escape(n)}</b>: items {html.escape(str(d.attrs.get('items', '?')))}, "
                f"N = {d.sizes['item']}, ridge {d.attrs.get('ridge', 0)}, layers {lays[0]}–{lays[-1]} "
                f"({len(lays)}), top {d.sizes.get('rank', 0)} pairs per layer")
    parts = [one(ds, name)]
    if other is not None:
        parts.append(one(other, other_name or "compared"))
    return "; ".join(parts)


def _small(ds: xr.Dataset, layers: list[int]) -> xr.Dataset:
    """What the figures need, in memory: every layer's small arrays and the drawn layers' P
    matrices of the first MAX_HEATMAP_ITEMS items (the angle histograms read every item
    themselves, one layer at a time)."""
    keep = ("stats", "stats_ci", "pair_stats", "kde", "kde_x", "kde_outside", "convergence", "convergence_ci")
    small = [v for v in ds.data_vars if v in keep or (v.startswith("top_") and ds[v].dims == ("layer", "rank"))]
    n = min(ds.sizes["item"], MAX_HEATMAP_ITEMS)
    heat = ds["p_matrix"].sel(layer=layers).isel(item=slice(0, n), item_=slice(0, n)).astype(np.float32)
    rest = ds[small].compute()
    return xr.merge([rest, heat.rename("p_matrix").compute()], join="outer", compat="override",
                    combine_attrs="override")


# --- bokeh figures -----------------------------------------------------------------------------

def _palette(name: str, n: int = 256) -> list[str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return [to_hex(c) for c in colormaps[name](np.linspace(0.0, 1.0, n))]


def _symlog_y(fig, values) -> None:
    from bokeh.models import FixedTicker

    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    ticks = rd.symlog_ticks(float(finite.min()) if finite.size else 0.0, float(finite.max()) if finite.size else 1.0)
    fig.yaxis.ticker = FixedTicker(ticks=[t for t, _ in ticks])
    fig.yaxis.major_label_overrides = {t: lab for t, lab in ticks}


def _kurtosis_figure(curves, top_axis: int | None):
    from bokeh.models import ColumnDataSource, HoverTool, LinearAxis, Range1d
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    fig = figure(width=PAGE, height=430, title="Excess kurtosis of P's off-diagonal entries (symlog axis)",
                 x_axis_label="relative depth, layer / (n_layers − 1)", y_axis_label="excess kurtosis of P",
                 tools="pan,wheel_zoom,box_zoom,reset,save", x_range=Range1d(-0.02, 1.02))
    ref = rd.paper_reference()
    src = ColumnDataSource({"x": ref["relative_depth"], "y": rd.symlog(ref["value"]), "value": ref["value"],
                            "layer": ref["layer"], "label": ["GPT-2 small (paper, ≈)"] * len(ref)})
    fig.line("x", "y", source=src, color="#777777", line_dash="dashed", line_width=2,
             legend_label="GPT-2 small (paper, ≈)")
    renderers = [fig.scatter("x", "y", source=src, color="#777777", marker="square", size=6)]
    allv = [ref["value"].to_numpy()]
    for i, (label, df, dashed) in enumerate(curves):
        color = Category10_10[(i // 2 if any(c[2] for c in curves) else i) % 10]
        data = {"x": df["relative_depth"], "y": rd.symlog(df["value"]), "value": df["value"], "layer": df["layer"],
                "label": [label] * len(df), "low": rd.symlog(df["low"]), "high": rd.symlog(df["high"])}
        s = ColumnDataSource(data)
        if df["low"].notna().any():
            fig.varea("x", "low", "high", source=s, fill_color=color, fill_alpha=0.18,
                      legend_label=f"{label}: 95 % CI")
            allv.append(df["high"].to_numpy())
        fig.line("x", "y", source=s, color=color, line_width=2.5, legend_label=label,
                 line_dash="dashed" if dashed else "solid")
        renderers.append(fig.scatter("x", "y", source=s, color=color, size=7,
                                     marker="triangle" if dashed else "circle", legend_label=label))
        allv.append(df["value"].to_numpy())
    fig.add_tools(HoverTool(renderers=renderers, tooltips=[("", "@label"), ("layer", "@layer"),
                                                           ("excess kurtosis", "@value{0.00}")]))
    _symlog_y(fig, np.concatenate(allv))
    if top_axis and top_axis > 1:
        fig.extra_x_ranges = {"layer": Range1d(-0.02 * (top_axis - 1), 1.02 * (top_axis - 1))}
        fig.add_layout(LinearAxis(x_range_name="layer", axis_label="layer"), "above")
    fig.legend.location = "top_right"
    fig.legend.click_policy = "hide"
    return fig


def _pair_set_figure(frame: pd.DataFrame):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    fig = figure(width=PAGE, height=360, title="Excess kurtosis of P per pair set (symlog axis)",
                 x_axis_label="layer", y_axis_label="excess kurtosis of P", tools="pan,wheel_zoom,reset,save")
    rends = []
    for i, (pair_set, grp) in enumerate(frame.groupby("pair_set", sort=False)):
        s = ColumnDataSource({"x": grp["layer"], "y": rd.symlog(grp["value"]), "value": grp["value"],
                              "set": [pair_set] * len(grp)})
        fig.line("x", "y", source=s, color=Category10_10[i % 10], line_width=2, legend_label=pair_set)
        rends.append(fig.scatter("x", "y", source=s, color=Category10_10[i % 10], size=5, legend_label=pair_set))
    fig.add_tools(HoverTool(renderers=rends, tooltips=[("pair set", "@set"), ("layer", "@x"),
                                                       ("excess kurtosis", "@value{0.00}")]))
    _symlog_y(fig, frame["value"])
    fig.legend.click_policy = "hide"
    return fig


def _heatmap_figure(p: np.ndarray, facts: pd.DataFrame, model: str, layer: int, name: str):
    from bokeh.models import ColorBar, CustomJSHover, HoverTool, LinearColorMapper, Range1d
    from bokeh.plotting import figure

    n = p.shape[0]
    lim = rd.heat_limit(p)
    texts = [f"{s} — {f}" if s else f"case {c}" for c, s, f in
             zip(facts["case_id"][:n], facts["subject"][:n], facts["fact"][:n], strict=True)]
    mapper = LinearColorMapper(palette=_palette("RdBu_r"), low=-lim, high=lim)
    fig = figure(width=650, height=620, title=f"{model}: P, layer {layer} ({n} items)", name=name,
                 x_range=Range1d(0, n), y_range=Range1d(n, 0), tools="pan,wheel_zoom,box_zoom,reset,save",
                 x_axis_label="column item j (fact disturbed), position", y_axis_label="row item i (fact edited), position")
    img = fig.image(image=[p.astype(np.float32)], x=0, y=0, dw=n, dh=n, color_mapper=mapper)
    fig.add_layout(ColorBar(color_mapper=mapper, title="P", width=12), "right")
    code = "const i = Math.floor(value); return (i >= 0 && i < facts.length) ? facts[i] : '';"
    fig.add_tools(HoverTool(renderers=[img], tooltips=[
        ("row i, edited", "$y{row}"), ("column j, disturbed", "$x{column}"), ("P_ij", "@image{0.0000}")],
        formatters={"$y": CustomJSHover(args={"facts": texts}, code=code),
                    "$x": CustomJSHover(args={"facts": texts}, code=code)}))
    return fig


def _kde_figure(curves, model: str, layer: int, name: str):
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    xs = np.concatenate([c[1] for c in curves]) if curves else np.array([-1.0, 1.0])
    top = max((float(np.nanmax(c[2])) for c in curves), default=1.0) or 1.0
    fig = figure(width=PAGE - 660, height=300, y_axis_type="log", name=name,
                 x_range=(float(xs.min()), float(xs.max())), y_range=(top * 1e-5, top * 2),
                 title=f"{model}: KDE of the off-diagonal entries, layer {layer}",
                 x_axis_label="value (dimensionless)", y_axis_label="density (log)", tools="pan,wheel_zoom,reset,save")
    rends = []
    for i, (label, x, y, outside) in enumerate(curves):
        floor = top * 1e-5
        legend = label + (f" ({100 * outside:.1f} % outside grid)" if outside is not None else "")
        s = ColumnDataSource({"x": x, "y": np.maximum(y, floor), "q": [label] * len(x)})
        rends.append(fig.line("x", "y", source=s, color=Category10_10[i % 10], line_width=2, legend_label=legend))
    fig.add_tools(HoverTool(renderers=rends, tooltips=[("", "@q"), ("value", "@x{0.000}"), ("density", "@y{0.000}")]))
    fig.legend.location = "top_right"
    fig.legend.click_policy = "hide"
    return fig


def _angles_figure(hists, model: str, layer: int, name: str):
    from bokeh.models import ColumnDataSource, HoverTool, Span
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    top = max((float(np.nanmax(h[2])) for h in hists), default=1.0) or 1.0
    fig = figure(width=PAGE - 660, height=300, name=name, x_range=(0, 180), y_range=(0, top * 1.1),
                 title=f"{model}: whitened vs activation angles, layer {layer}",
                 x_axis_label="angle between keys (degrees)", y_axis_label="density (1/degree)",
                 tools="pan,wheel_zoom,reset,save")
    rends = []
    for i, (label, edges, dens) in enumerate(hists):
        color = Category10_10[i % 10]
        s = ColumnDataSource({"left": edges[:-1], "right": edges[1:], "top": dens, "kind": [label] * len(dens)})
        rends.append(fig.quad(left="left", right="right", top="top", bottom=0, source=s, fill_color=color,
                              fill_alpha=0.35, line_color=color, line_alpha=0.9, legend_label=label))
    fig.add_layout(Span(location=90, dimension="height", line_dash="dashed", line_color="#555555"))
    fig.add_tools(HoverTool(renderers=rends, tooltips=[("", "@kind"), ("angle", "@left{0}–@right{0}°"),
                                                       ("density", "@top{0.0000}")]))
    fig.legend.location = "top_left"
    return fig


def _convergence_figure(layers: np.ndarray, sizes: np.ndarray, kurt: np.ndarray, model: str,
                        bounds: tuple[np.ndarray, np.ndarray] | None = None):
    from bokeh.models import (
        BasicTicker,
        ColorBar,
        ColumnDataSource,
        FixedTicker,
        HoverTool,
        LinearColorMapper,
    )
    from bokeh.plotting import figure

    pal = _palette("viridis")
    lo, hi = int(layers.min()), int(max(layers.max(), layers.min() + 1))
    mapper = LinearColorMapper(palette=pal, low=lo, high=hi)
    fig = figure(width=PAGE, height=400, x_axis_type="log", tools="pan,wheel_zoom,reset,save",
                 title=f"{model}: excess kurtosis of P for the first n items (symlog axis)",
                 x_axis_label="number of items n (the first n)", y_axis_label="excess kurtosis of P")
    rends = []
    for li, lay in enumerate(layers):
        color = pal[int(round((lay - lo) / max(hi - lo, 1) * (len(pal) - 1)))]
        low, high = (bounds[0][li], bounds[1][li]) if bounds is not None else (kurt[li] * np.nan, kurt[li] * np.nan)
        s = ColumnDataSource({"x": sizes, "y": rd.symlog(kurt[li]), "value": kurt[li], "layer": [int(lay)] * len(sizes),
                              "low": low, "high": high, "y_low": rd.symlog(low), "y_high": rd.symlog(high)})
        fig.line("x", "y", source=s, color=color, line_width=2)
        if bounds is not None:
            fig.segment("x", "y_low", "x", "y_high", source=s, color=color, line_width=1, line_alpha=0.5)
        rends.append(fig.scatter("x", "y", source=s, color=color, size=5))
    fig.xaxis.ticker = FixedTicker(ticks=[int(s) for s in sizes])
    fig.add_layout(ColorBar(color_mapper=mapper, title="layer", width=14, ticker=BasicTicker(min_interval=1)), "right")
    fig.add_tools(HoverTool(renderers=rends, tooltips=[("layer", "@layer"), ("n items", "@x"),
                                                       ("excess kurtosis", "@value{0.00}"),
                                                       *([("95 % CI", "@low{0.00} to @high{0.00}")]
                                                         if bounds is not None else [])]))
    _symlog_y(fig, kurt)
    return fig


def _scaling_section(page: _Page, table: pd.DataFrame, out: Path, dpi: int, pngs: list[Path]) -> None:
    col = rd.kurtosis_column(table) if not table.empty else None
    models = sorted(table["model"].unique()) if not table.empty else []
    known = table[table["n_params"] > 0] if not table.empty else table
    per_model = (known.groupby(["model", "family"], as_index=False)
                 .agg(n_params=("n_params", "first"), mean_kurtosis=(col, "mean"))) if col and len(known) else None
    if per_model is None or len(per_model) < 2:
        why = (f"This analysis holds {len(models)} model(s) ({', '.join(models) or 'none'})"
               + (f", {len(per_model)} with a known parameter count" if per_model is not None else "")
               + ": a scaling plot needs two or more models with known sizes analysed together "
               "(extract several models into one store, then analyze it).")
        page.sentence("Scaling with model size", why)
        return
    from bokeh.models import ColumnDataSource, CustomJSTickFormatter, HoverTool, LabelSet
    from bokeh.palettes import Category10_10
    from bokeh.plotting import figure

    fig = figure(width=PAGE, height=380, x_axis_type="log", tools="pan,wheel_zoom,reset,save",
                 title="Mean excess kurtosis of P over layers vs parameters",
                 x_axis_label="parameters (log scale)", y_axis_label="mean excess kurtosis of P")
    rends = []
    for i, (family, grp) in enumerate(per_model.groupby("family")):
        s = ColumnDataSource({"x": grp["n_params"], "y": grp["mean_kurtosis"], "model": grp["model"],
                              "params": [rd.param_label(v) for v in grp["n_params"]]})
        rends.append(fig.scatter("x", "y", source=s, size=12, color=Category10_10[i % 10], legend_label=str(family)))
        fig.add_layout(LabelSet(x="x", y="y", text="model", source=s, x_offset=8, y_offset=4, text_font_size="12px"))
    fig.x_range.range_padding = 0.4
    fig.y_range.range_padding = 0.3
    fig.legend.location = "top_left"
    fig.xaxis.formatter = CustomJSTickFormatter(code=PARAM_TICK_JS)
    fig.add_tools(HoverTool(renderers=rends, tooltips=[("model", "@model"), ("parameters", "@params"),
                                                       ("mean excess kurtosis", "@y{0.00}")]))
    page.section("Scaling with model size", fig, note="One point per model; relative depth curves are in the "
                 "first figure.")
    pngs.append(report_png.scaling_png(per_model, out / "scaling_params.png", dpi))


def _stack(figs):
    """One column of per-layer figures of which the first layer's show (the selector swaps)."""
    from bokeh.layouts import column

    first = figs[0].name.rsplit("|", 1)[-1]
    for fig in figs:
        fig.visible = fig.name.rsplit("|", 1)[-1] == first
    return column(*figs)


# --- the page ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px 20px; color: #222; }
h1 { margin: 0 0 4px; } h2 { margin: 28px 0 6px; border-bottom: 1px solid #ddd; }
.note { color: #555; font-size: 13px; max-width: 1320px; margin: 4px 0 8px; }
.row { display: flex; gap: 10px; align-items: flex-start; }
.side { display: flex; gap: 16px; align-items: flex-start; }
.side > div { flex: 1 1 0; min-width: 0; }
table.pairs, table.scaling { border-collapse: collapse; font-size: 13px; width: 100%; }
table.pairs th, table.pairs td, table.scaling th, table.scaling td {
  border-bottom: 1px solid #e4e4e4; padding: 3px 6px; text-align: left; vertical-align: top; }
table.pairs tr[data-tip]:hover { background: #fff4d6; }
.wrap { overflow-x: auto; max-width: 1360px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
select.layer-select { font-size: 15px; padding: 2px 6px; }
#tip { position: fixed; display: none; z-index: 10; background: #fffbe8; border: 1px solid #aa9;
  padding: 6px 8px; font-size: 13px; white-space: pre-line; max-width: 640px; pointer-events: none;
  box-shadow: 2px 2px 6px rgba(0,0,0,.2); }
"""

_JS = """
function kissShow(group, layer) {
  const doc = Bokeh.documents[0];
  for (const [lay, names] of Object.entries(KISS_LAYERS[group])) {
    for (const n of names) { const m = doc.get_model_by_name(n); if (m) m.visible = (lay === layer); }
  }
  document.querySelectorAll('[data-group="' + group + '"][data-layer]').forEach(
    el => { el.hidden = el.dataset.layer !== layer; });
}
function kissInit() {
  if (!(window.Bokeh && Bokeh.documents && Bokeh.documents.length)) { setTimeout(kissInit, 50); return; }
  document.querySelectorAll('select.layer-select').forEach(sel => {
    sel.addEventListener('change', () => kissShow(sel.dataset.group, sel.value));
    kissShow(sel.dataset.group, sel.value);
  });
  document.body.dataset.ready = '1';
}
const tip = document.getElementById('tip');
document.addEventListener('mouseover', e => {
  const tr = e.target.closest ? e.target.closest('tr[data-tip]') : null;
  if (!tr) { tip.style.display = 'none'; return; }
  tip.textContent = tr.dataset.tip; tip.style.display = 'block';
});
document.addEventListener('mousemove', e => {
  if (tip.style.display === 'block') { tip.style.left = (e.clientX + 14) + 'px'; tip.style.top = (e.clientY + 14) + 'px'; }
});
kissInit();
"""


class _Page:
    """Collects the page's blocks: HTML strings and bokeh roots (placed through placeholders)."""

    def __init__(self):
        self.blocks: list[str] = []
        self.roots: dict[str, object] = {}
        self.layers: dict[str, dict[str, list[str]]] = {}

    def _root(self, obj) -> str:
        key = f"root{len(self.roots)}"
        self.roots[key] = obj
        return f"@@{key}@@"

    def section(self, title: str, obj, note: str = "") -> None:
        self.blocks.append(f"<h2>{html.escape(title)}</h2>" + (f'<p class="note">{html.escape(note)}</p>' if note else "")
                           + f'<div class="fig">{self._root(obj)}</div>')

    def sentence(self, title: str, text: str) -> None:
        self.blocks.append(f'<h2>{html.escape(title)}</h2><p class="note" id="scaling-note">{html.escape(text)}</p>')

    def model_header(self, model: str, group: str, layers: list[int], settings: str) -> None:
        options = "".join(f'<option value="{lay}">layer {lay}</option>' for lay in layers)
        self.blocks.append(f'<h2 id="model-{html.escape(model)}">{html.escape(model)}</h2><p class="note">{settings}</p>'
                           f'<label>Layer: <select class="layer-select" data-group="{group}" '
                           f'data-model="{html.escape(model)}">{options}</select></label> '
                           '<span class="note">drives the heatmap, KDE, angles and top-pairs table below</span>')
        self.layers[group] = {str(lay): [] for lay in layers}

    def layer_models(self, group: str, layer: int, names: list[str]) -> None:
        self.layers[group][str(layer)].extend(names)

    def figure_row(self, group: str, objs: list, note: str = "") -> None:
        cells = "".join(f'<div class="fig" id="{group}-{k}">{self._root(o)}</div>' for k, o in
                        zip(("heat", "side"), objs, strict=False))
        self.blocks.append(f'<p class="note">{html.escape(note)}</p><div class="row">{cells}</div>')

    def top_pairs(self, group: str, model: str, layers: list[int], tables: list[tuple[str, pd.DataFrame]]) -> None:
        title = (f"{model}: top pairs of the selected layer" + (" — side by side: " + " | ".join(n for n, _ in tables)
                                                                 if len(tables) > 1 else ""))
        cols = []
        for tname, frame in tables:
            parts = [f"<h3>{html.escape(tname)}</h3>"] if len(tables) > 1 else []
            for lay in layers:
                sub = frame[frame["layer"] == lay] if not frame.empty else frame
                if sub.empty:
                    body = f'<p class="note">layer {lay} is not in this analysis</p>'
                else:
                    body = _pairs_table(sub)
                parts.append(f'<div data-group="{group}" data-layer="{lay}" class="pairs-{_slug(tname)}">{body}</div>')
            cols.append(f'<div>{"".join(parts)}</div>')
        self.blocks.append(f"<h2>{html.escape(title)}</h2><p class=\"note\">P<sub>ij</sub>: editing fact i (row) "
                           "moves fact j's value by P<sub>ij</sub> times the edit. Hover a row for both facts.</p>"
                           f'<div class="side" id="{group}-pairs">{"".join(cols)}</div>')

    def scaling_table(self, table: pd.DataFrame) -> None:
        keep = [c for c in ("model", "family", "n_params", "layer", "relative_depth") if c in table]
        keep += [c for c in table.columns if c.endswith(("_mean", "_std", "kurtosis")) and c not in keep]
        head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in keep)
        rows = []
        for _, r in table[keep].iterrows():
            cells = []
            for c in keep:
                v = r[c]
                if c == "n_params":
                    cells.append(f'<td class="num">{rd.param_label(v) if v > 0 else "unknown"}</td>')
                elif isinstance(v, float):
                    cells.append(f'<td class="num">{v:.4g}</td>')
                else:
                    cells.append(f"<td>{html.escape(str(v))}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        self.blocks.append("<h2>Scaling table</h2><p class=\"note\">Full precision in scaling.csv and scaling.parquet."
                           f'</p><div class="wrap"><table class="scaling"><tr>{head}</tr>{"".join(rows)}</table></div>')

    def render(self) -> str:
        from bokeh.embed import components
        from bokeh.resources import INLINE

        script, divs = components(self.roots) if self.roots else ("", {})
        body = "\n".join(self.blocks)
        body = re.sub(r"@@(root\d+)@@", lambda m: divs[m.group(1)], body)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>kisstore analysis report</title>'
                f"{INLINE.render()}<style>{_CSS}</style></head><body>"
                "<h1>kisstore analysis report</h1><p class=\"note\">Statistics over the N(N−1) off-diagonal entries of "
                "P<sub>ij</sub> = k<sub>i</sub><sup>T</sup>C<sup>−1</sup>k<sub>j</sub> / "
                "k<sub>i</sub><sup>T</sup>C<sup>−1</sup>k<sub>i</sub> (Hu et al., AAAI 2025). docs/quantities.md "
                f"says how to read each figure.</p>{body}<div id=\"tip\"></div>{script}"
                f"<script>const KISS_LAYERS = {json.dumps(self.layers)};{_JS}</script></body></html>")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _pairs_table(frame: pd.DataFrame) -> str:
    flags = [label for _, label in rd.PAIR_FLAGS if label in frame]
    head = ("<tr><th>rank</th><th>P<sub>ij</sub></th><th>row fact i (edited)</th><th>column fact j (disturbed)</th>"
            + "".join(f"<th>{html.escape(f)}</th>" for f in flags) + "</tr>")
    rows = []
    for _, r in frame.iterrows():
        tip = (f"P = {r['P']:.4f} (layer {r['layer']}, rank {r['rank']})\n"
               f"row i (edited): {r['row subject']} — {r['row fact']} [case {r['row case']}]\n"
               f"column j (disturbed): {r['column subject']} — {r['column fact']} [case {r['column case']}]")
        cells = (f'<td class="num">{r["rank"]}</td><td class="num">{r["P"]:.4f}</td>'
                 f"<td><b>{html.escape(r['row subject'])}</b>: {html.escape(r['row fact'])}</td>"
                 f"<td><b>{html.escape(r['column subject'])}</b>: {html.escape(r['column fact'])}</td>"
                 + "".join(f"<td>{'yes' if r[f] else ''}</td>" for f in flags))
        rows.append(f'<tr data-tip="{html.escape(tip)}">{cells}</tr>')
    return f'<table class="pairs">{head}{"".join(rows)}</table>'
