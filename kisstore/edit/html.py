"""An HTML report of edit runs: one self-contained file (inline SVG, CSS and a few lines of JS).

It opens offline and needs no kisstore: the forgetting curve of every run (several runs of one
store side by side, and the methods on one chart against the number of facts edited),
CounterFact's metrics over the evaluated steps, the forecast drift against the measured loss
(for a MEMIT/AlphaEdit run also per layer, against the live model's change), and the facts the
edits hurt most, with their text on hover.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from kisstore.edit.report import (
    drift_by_layer,
    forgetting_curve,
    is_spread,
    method_comparison,
    run_title,
)

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_W, _H, _M = 600, 300, (28, 16, 46, 58)  # width, height, margins: top, right, bottom, left

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1340px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.row{display:flex;flex-wrap:wrap;gap:18px} .panel{flex:0 0 auto} .panel.wide{flex:1 1 100%;min-width:0}
svg{background:#fff;border:1px solid #e4e4e4} svg text{font-size:11px;fill:#333}
svg .title{font-size:13px;font-weight:600} .axis line,.axis path{stroke:#888} .grid{stroke:#eee}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#777;font-size:13px}
#tip{position:fixed;pointer-events:none;background:#222;color:#fff;padding:6px 8px;border-radius:4px;
font-size:12px;max-width:420px;display:none;z-index:10;white-space:pre-line}
[data-tip]{cursor:default} [data-tip]:hover{opacity:.75}
"""

_JS = """
(function(){
  var tip=document.getElementById('tip');
  document.querySelectorAll('[data-tip]').forEach(function(el){
    el.addEventListener('mouseenter',function(){tip.textContent=el.getAttribute('data-tip');tip.style.display='block';});
    el.addEventListener('mousemove',function(e){tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';});
    el.addEventListener('mouseleave',function(){tip.style.display='none';});
  });
})();
"""


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:.3g}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Axes:
    """Data → pixel mapping of one chart, and its frame, grid, ticks and labels as SVG."""

    def __init__(self, xlim, ylim, title: str, xlabel: str, ylabel: str, width=_W, height=_H):
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        if not self.x1 > self.x0:
            self.x1 = self.x0 + 1
        if not self.y1 > self.y0:
            self.y1 = self.y0 + 1
        self.w, self.h = width, height
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.parts: list[str] = []

    def px(self, x):
        t, r, b, left = _M
        return left + (x - self.x0) / (self.x1 - self.x0) * (self.w - left - r)

    def py(self, y):
        t, r, b, left = _M
        return self.h - b - (y - self.y0) / (self.y1 - self.y0) * (self.h - t - b)

    def frame(self) -> str:
        t, r, b, left = _M
        out = []
        for y in _ticks(self.y0, self.y1):
            out.append(f'<line class="grid" x1="{left}" x2="{self.w - r}" y1="{self.py(y):.1f}" y2="{self.py(y):.1f}"/>'
                       f'<text x="{left - 6}" y="{self.py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        for x in _ticks(self.x0, self.x1):
            out.append(f'<text x="{self.px(x):.1f}" y="{self.h - b + 16}" text-anchor="middle">{x:g}</text>')
        out.append(f'<g class="axis"><line x1="{left}" x2="{self.w - r}" y1="{self.h - b}" y2="{self.h - b}"/>'
                   f'<line x1="{left}" x2="{left}" y1="{t}" y2="{self.h - b}"/></g>')
        out.append(f'<text class="title" x="{left}" y="{t - 10}">{html.escape(self.title)}</text>')
        out.append(f'<text x="{(left + self.w - r) / 2:.0f}" y="{self.h - 8}" text-anchor="middle">'
                   f'{html.escape(self.xlabel)}</text>')
        out.append(f'<text transform="translate(14,{(t + self.h - b) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                   f'{html.escape(self.ylabel)}</text>')
        return "".join(out)

    def line(self, x, y, color: str, label: str, dash: bool = False, markers: bool = True, unit: str = "",
             xname: str = "step") -> None:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            return
        pts = " ".join(f"{self.px(a):.1f},{self.py(b):.1f}" for a, b in zip(x[ok], y[ok], strict=True))
        style = ' stroke-dasharray="5,3"' if dash else ""
        self.parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8"{style} points="{pts}"/>')
        if markers:
            for a, b in zip(x[ok], y[ok], strict=True):
                tip = html.escape(f"{label}\n{xname} {a:g}: {_fmt(b)}{unit}", quote=True)
                self.parts.append(f'<circle cx="{self.px(a):.1f}" cy="{self.py(b):.1f}" r="3" fill="{color}" '
                                  f'data-tip="{tip}"/>')

    def points(self, x, y, tips: Sequence[str], color: str = COLORS[0]) -> None:
        for a, b, tip in zip(x, y, tips, strict=True):
            if np.isfinite(a) and np.isfinite(b):
                self.parts.append(f'<circle class="fact" cx="{self.px(a):.1f}" cy="{self.py(b):.1f}" r="3.5" '
                                  f'fill="{color}" fill-opacity="0.7" data-tip="{html.escape(tip, quote=True)}"/>')

    def legend(self, entries: Sequence[tuple[str, str, bool]]) -> None:
        t, r, b, left = _M
        self.parts.append(f'<rect x="{self.w - r - 196}" y="{t - 2}" width="194" height="{14 * len(entries) + 6}" '
                          'fill="#fff" fill-opacity="0.85" stroke="#ddd"/>')
        for i, (label, color, dash) in enumerate(entries):
            y = t + 8 + 14 * i
            style = ' stroke-dasharray="5,3"' if dash else ""
            self.parts.append(f'<line x1="{self.w - r - 190}" x2="{self.w - r - 170}" y1="{y}" y2="{y}" '
                              f'stroke="{color}" stroke-width="2"{style}/><text x="{self.w - r - 165}" y="{y + 4}">'
                              f'{html.escape(label)}</text>')

    def svg(self, cls: str = "") -> str:
        return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{html.escape(self.title, quote=True)}">'
                f'{self.frame()}{"".join(self.parts)}</svg>')


def _label(ds: xr.Dataset) -> str:
    return f"{ds.attrs.get('method', '?')} — {ds.attrs.get('run', '')}"


def _where(ds: xr.Dataset) -> str:
    """'layer 4' or 'layers 3–8, batches of 20'."""
    if is_spread(ds):
        lay = [int(x) for x in ds["layer"].values]
        span = f"layers {lay[0]}–{lay[-1]}" if len(lay) > 1 else f"layer {lay[0]}"
        return f"{span}, batches of {ds.attrs.get('batch', '?')}"
    return f"layer {ds.attrs.get('layer', '')}"


def fact_text(ds: xr.Dataset, i: int) -> str:
    """The fact's prompt with its subject, and its true target: 'The mother tongue of X is → French'."""
    prompt = str(ds["prompt"].values[i]).replace("{}", str(ds["subject"].values[i]), 1)
    return f"{prompt} → {ds['target_true'].values[i]}"


def hurt_most(ds: xr.Dataset, n: int = 10) -> list[dict]:
    """The tracked facts whose log p(target_true) fell most by the last step, with their text."""
    tracked = np.flatnonzero(ds["role"].values == "tracked")
    p = ds["p_true"].values
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.log(p[0, tracked]) - np.log(p[-1, tracked])
    drift = ds["forecast_drift"].values[-1, tracked] if "forecast_drift" in ds else np.full(len(tracked), np.nan)
    order = np.argsort(-np.nan_to_num(drop, nan=-np.inf))[:n]
    return [{"case_id": int(ds["item"].values[tracked[k]]), "text": fact_text(ds, tracked[k]),
             "p_before": float(p[0, tracked[k]]), "p_after": float(p[-1, tracked[k]]), "drop": float(drop[k]),
             "drift": float(drift[k]), "known_after": bool(ds["top1"].values[-1, tracked[k]])}
            for k in order if np.isfinite(drop[k])]


def _forgetting_panel(ds: xr.Dataset) -> str:
    c = forgetting_curve(ds)
    ax = _Axes((0, float(c["edited"][-1])), (0, 1.0), f"Forgetting — {_label(ds)}", "number of facts edited",
               "probability / share of facts")
    entries = [("tracked: top-1 (share known)", COLORS[0], False), ("tracked: mean p(true)", COLORS[1], False),
               ("efficacy p(new) after edit", COLORS[2], False), ("edited so far: mean p(new)", COLORS[3], True)]
    for (label, color, dash), key in zip(entries, ("top1", "p_true", "efficacy", "retention"), strict=True):
        ax.line(c["edited"], c[key], color, label, dash=dash, markers=len(c["edited"]) <= 121, xname="facts edited")
    ax.legend(entries)
    return ax.svg("forgetting")


def _metrics_panels(ds: xr.Dataset) -> str:
    if "eval_step" not in ds.dims:
        return '<p class="muted">No CounterFact evaluation in this run (--eval-every 0).</p>'
    s = ds["eval_step"].values
    ax = _Axes((0, float(s[-1])), (0, 1.0), f"CounterFact scores — {_label(ds)}", "number of sequential edits",
               "share of edited facts")
    entries = [("efficacy score", COLORS[0], False), ("paraphrase score", COLORS[2], False),
               ("neighborhood score", COLORS[1], False), ("tracked still known", COLORS[3], True)]
    keys = ("efficacy_score", "paraphrase_score", "neighborhood_score")
    for (label, color, dash), key in zip(entries, keys, strict=False):
        ax.line(s, ds[key].values, color, label, dash=dash)
    if "measured_retention" in ds:
        ax.line(ds["step"].values, ds["measured_retention"].values, COLORS[3], entries[3][0], dash=True, markers=False)
    ax.legend(entries)
    flu = ds["fluency"].values
    lo = float(np.nanmin(flu)) if np.isfinite(flu).any() else 0.0
    hi = float(np.nanmax(flu)) if np.isfinite(flu).any() else 1.0
    fx = _Axes((0, float(s[-1])), (max(0.0, lo - 0.5), hi + 0.5), "Fluency (n-gram entropy of greedy generations)",
               "number of sequential edits", "entropy (bits)")
    fx.line(s, flu, COLORS[4], "fluency", unit=" bits")
    return f'<div class="panel">{ax.svg("metrics")}</div><div class="panel">{fx.svg("fluency")}</div>'


def _forecast_panels(ds: xr.Dataset) -> str:
    if "forecast_drift" not in ds:
        return '<p class="muted">No forecast in this run.</p>'
    tracked = np.flatnonzero(ds["role"].values == "tracked")
    drift = ds["forecast_drift"].values[-1, tracked]
    drop = ds["logp_true_drop"].values[-1, tracked]
    fit = ds.attrs.get("forecast", {})
    ok = np.isfinite(drift) & np.isfinite(drop)
    xmax = float(np.max(drift[ok])) * 1.05 if ok.any() else 1.0
    ylo = min(0.0, float(np.min(drop[ok]))) if ok.any() else 0.0
    yhi = float(np.max(drop[ok])) * 1.05 if ok.any() else 1.0
    ax = _Axes((0, xmax), (ylo, yhi), f"Predicted drift vs measured loss, step {int(ds['step'].values[-1])} "
               f"(ρ = {_fmt(fit.get('spearman_logp_drop', float('nan')))})",
               "predicted drift |ΣP·r| / |W₀k| (dimensionless)", "drop of log p(true) (nats)")
    tips = []
    for k, i in enumerate(tracked):
        still = "still known" if ds["top1"].values[-1, i] else "forgotten"
        tips.append(f"{fact_text(ds, i)}\ndrift {_fmt(drift[k])}, log-p drop {_fmt(drop[k])} nats ({still})")
    ax.points(drift, drop, tips)
    steps = ds["step"].values
    rx = _Axes((0, float(steps[-1])), (0, 1.0), f"Retention: measured vs forecast (collapse < "
               f"{fit.get('collapse_threshold', 0.5):g})", "number of sequential edits", "share of tracked facts known")
    entries = [("measured", COLORS[0], False), ("forecast (drift < d_c)", COLORS[1], True)]
    rx.line(steps, ds["measured_retention"].values, COLORS[0], "measured", markers=steps[-1] <= 120)
    rx.line(steps, ds["forecast_retention"].values, COLORS[1], "forecast (drift < d_c)", dash=True, markers=False)
    rx.legend(entries)
    return f'<div class="panel">{ax.svg("drift")}</div><div class="panel">{rx.svg("retention")}</div>'


def _layer_panels(ds: xr.Dataset) -> str:
    """A spread run: each tracked fact's predicted drift per layer against the live model's."""
    d = drift_by_layer(ds)
    ok = np.isfinite(d["predicted"]) & np.isfinite(d["live"])
    top = float(max(np.max(d["predicted"][ok]), np.max(d["live"][ok]))) * 1.05 if ok.any() else 1.0
    ax = _Axes((0, top), (0, top), f"Drift per layer, predicted vs live, step {int(ds['step'].values[-1])}",
               "predicted drift |ΣRᵀadjᵀk| / |W⁰k| (store only)", "live drift |Δ live value| / |W⁰k|")
    ax.parts.append(f'<line x1="{ax.px(0):.1f}" y1="{ax.py(0):.1f}" x2="{ax.px(top):.1f}" y2="{ax.py(top):.1f}" '
                    'stroke="#999" stroke-dasharray="3,3"/>')
    entries = []
    for li, lay in enumerate(d["layer"]):
        color = COLORS[li % len(COLORS)]
        tips = [f"layer {lay}: {fact_text(ds, i)}\npredicted drift {_fmt(d['predicted'][li, k])}, live "
                f"{_fmt(d['live'][li, k])}" for k, i in enumerate(d["tracked"])]
        ax.points(d["predicted"][li], d["live"][li], tips, color=color)
        entries.append((f"layer {lay}", color, False))
    ax.legend(entries[:12])
    fit = ds.attrs.get("forecast", {})
    r2 = fit.get("r2_logp_drop_by_layer", [float("nan")] * len(d["layer"]))
    rho = fit.get("spearman_logp_drop_by_layer", [float("nan")] * len(d["layer"]))
    rows = ["<table class='layers'><tr><th>layer</th><th>median predicted drift</th><th>median live drift</th>"
            "<th>max rel. error, predicted vs live</th><th>R² (drift vs log-p drop)</th><th>Spearman ρ</th></tr>"]
    for li, lay in enumerate(d["layer"]):
        with np.errstate(all="ignore"):
            med_p, med_l = np.nanmedian(d["predicted"][li]), np.nanmedian(d["live"][li])
        rows.append(f"<tr><td class='num'>{int(lay)}</td><td class='num'>{_fmt(med_p)}</td>"
                    f"<td class='num'>{_fmt(med_l)}</td><td class='num'>{_fmt(d['live_error'][li])}</td>"
                    f"<td class='num'>{_fmt(r2[li])}</td><td class='num'>{_fmt(rho[li])}</td></tr>")
    rows.append("</table><p class='muted'>The prediction uses the stored keys; above the first layer the live "
                "keys have moved (edits below change them), which it does not include.</p>")
    return f'<div class="panel">{ax.svg("layerdrift")}</div><div class="panel wide">{"".join(rows)}</div>'


def _comparison_panels(runs: Sequence[xr.Dataset]) -> str:
    """Every run on one chart (tracked facts still known against facts edited) and a table."""
    top = max(float(forgetting_curve(ds)["edited"][-1]) for ds in runs)
    ax = _Axes((0, top), (0, 1.0), "Tracked facts still known, per method", "number of facts edited",
               "share of tracked facts known (top-1)", width=_W + 120)
    entries = []
    for k, ds in enumerate(runs):
        c = forgetting_curve(ds)
        color = COLORS[k % len(COLORS)]
        ax.line(c["edited"], c["top1"], color, _label(ds), markers=len(c["edited"]) <= 121, xname="facts edited")
        entries.append((f"{ds.attrs.get('method', '?')} ({_where(ds).split(',')[0]})", color, False))
    ax.legend(entries)
    head = ("<table class='compare'><tr><th>run</th><th>method</th><th>where</th><th>facts edited</th>"
            "<th>efficacy</th><th>generalization</th><th>specificity</th><th>fluency (bits)</th>"
            "<th>tracked known</th><th>R²</th><th>ρ</th><th>collapse predicted / measured</th><th>seconds</th></tr>")
    body = []
    for ds, r in zip(runs, method_comparison(runs), strict=True):
        body.append(f"<tr><td>{html.escape(str(r['run']))}</td><td>{html.escape(str(r['method']))}</td>"
                    f"<td>{html.escape(_where(ds))}</td><td class='num'>{r['edited']}</td>"
                    + "".join(f"<td class='num'>{_fmt(r[k])}</td>" for k in
                              ("efficacy_score", "paraphrase_score", "neighborhood_score", "fluency", "top1", "r2",
                               "rho"))
                    + f"<td class='num'>{r['collapse_predicted']} / {r['collapse_measured']}</td>"
                    f"<td class='num'>{_fmt(r['seconds'])}</td></tr>")
    return (f'<div class="panel">{ax.svg("compare")}</div>'
            f'<div class="panel wide">{head}{"".join(body)}</table><p class="muted">CounterFact\'s scores at each '
            "run's last evaluated step; a collapse step of −1: not reached.</p></div>")


def _hurt_panel(ds: xr.Dataset) -> str:
    rows = hurt_most(ds)
    if not rows:
        return '<p class="muted">No tracked facts.</p>'
    top = max(r["drop"] for r in rows) or 1.0
    height = 30 + 22 * len(rows)
    bars = [f'<text class="title" x="10" y="18">Facts hurt most — {html.escape(_label(ds))} (hover for the fact)</text>']
    for k, r in enumerate(rows):
        y = 28 + 22 * k
        w = max(1.0, 400 * max(r["drop"], 0.0) / top)
        tip = (f"{r['text']}\np(true) {_fmt(r['p_before'])} → {_fmt(r['p_after'])} (log-p drop {_fmt(r['drop'])} nats)"
               f"\npredicted drift {_fmt(r['drift'])}; {'still known' if r['known_after'] else 'forgotten'}")
        label = r["text"] if len(r["text"]) <= 36 else r["text"][:35] + "…"
        bars.append(f'<text x="8" y="{y + 13}">{html.escape(label)}</text>'
                    f'<rect class="hurt" x="250" y="{y}" width="{w:.1f}" height="16" fill="{COLORS[1]}" '
                    f'data-tip="{html.escape(tip, quote=True)}"/>'
                    f'<text x="{255 + w:.1f}" y="{y + 13}">{_fmt(r["drop"])} nats</text>')
    svg = (f'<svg class="hurtmost" xmlns="http://www.w3.org/2000/svg" width="{_W + 120}" height="{height}" '
           f'viewBox="0 0 {_W + 120} {height}">{"".join(bars)}</svg>')
    table = ["<table><tr><th>case</th><th>fact</th><th>p(true) before</th><th>after</th><th>log-p drop (nats)</th>"
             "<th>predicted drift</th><th>known after</th></tr>"]
    for r in rows:
        table.append(f'<tr><td class="num">{r["case_id"]}</td><td>{html.escape(r["text"])}</td>'
                     f'<td class="num">{_fmt(r["p_before"])}</td><td class="num">{_fmt(r["p_after"])}</td>'
                     f'<td class="num">{_fmt(r["drop"])}</td><td class="num">{_fmt(r["drift"])}</td>'
                     f'<td>{"yes" if r["known_after"] else "no"}</td></tr>')
    table.append("</table>")
    return f'<div class="panel">{svg}</div><div class="panel">{"".join(table)}</div>'


def _summary(ds: xr.Dataset) -> str:
    fit = ds.attrs.get("forecast", {})
    cells = [("method", ds.attrs.get("method")), ("where", _where(ds)), ("edits", ds.attrs.get("edits")),
             ("tracked", ds.attrs.get("tracked")), ("max rel. error (pred vs measured)",
                                                    _fmt(ds.attrs.get("max_relative_error", float("nan")))),
             ("R² (drift vs log-p drop)", _fmt(fit.get("r2_logp_drop", float("nan")))),
             ("Spearman ρ", _fmt(fit.get("spearman_logp_drop", float("nan")))),
             ("AUC (drift → forgotten)", _fmt(fit.get("auc_forgotten", float("nan")))),
             ("collapse step: predicted / measured",
              f"{fit.get('predicted_collapse_step', '–')} / {fit.get('measured_collapse_step', '–')}"),
             ("collapse from P statistics alone", fit.get("predicted_collapse_step_statistical", "–"))]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in cells)
    return f"<table>{body}</table>"


def render(runs: Sequence[xr.Dataset], title: str = "kisstore edit report") -> str:
    """The report's HTML for one or more runs (the first is the main one)."""
    if not runs:
        raise ValueError("no runs to report")
    main = runs[0]
    wheres = list(dict.fromkeys(_where(ds) for ds in runs))
    head = (f"{main.attrs.get('model_id', '')} · {' / '.join(wheres)} · "
            f"{len(runs)} run{'s' if len(runs) > 1 else ''}")
    version = html.escape(str(main.attrs.get("versions", {}).get("kisstore", "")))
    parts = [f"<h1>{html.escape(title)}</h1><p class='muted'>{html.escape(head)} (kisstore {version}). "
             "A collapse step of −1: not reached within the run.</p>",
             "<h2>Runs</h2><div class='row'>" + "".join(
                 f"<div class='panel'><p><b>{html.escape(_label(ds))}</b></p>{_summary(ds)}</div>" for ds in runs)
             + "</div>",
             "<h2>Forgetting curve per method</h2><div class='row'>"
             + "".join(f"<div class='panel'>{_forgetting_panel(ds)}</div>" for ds in runs) + "</div>"]
    if len(runs) > 1:
        parts.append(f"<h2>Methods side by side</h2><div class='row'>{_comparison_panels(runs)}</div>")
    for ds in runs:
        parts.append(f"<h2>CounterFact metrics over steps — {html.escape(_label(ds))}</h2>"
                     f"<div class='row'>{_metrics_panels(ds)}</div>")
        parts.append(f"<h2>Predicted vs measured drift — {html.escape(_label(ds))}</h2>"
                     f"<div class='row'>{_forecast_panels(ds)}</div>")
        if is_spread(ds):
            parts.append(f"<h2>Drift per layer — {html.escape(_label(ds))} ({html.escape(run_title(ds))})</h2>"
                         f"<div class='row'>{_layer_panels(ds)}</div>")
        parts.append(f"<h2>Facts hurt most — {html.escape(_label(ds))}</h2><div class='row'>{_hurt_panel(ds)}</div>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{_CSS}</style></head><body>"
            f"{''.join(parts)}<div id='tip'></div><script>{_JS}</script></body></html>")


def write_html(runs: Sequence[xr.Dataset], folder: str | Path, name: str = "report.html") -> Path:
    """Write ``render(runs)`` to ``folder/name`` and return the path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(render(runs), encoding="utf-8")
    return path


def store_runs(store: str, main_run: str, storage_options: dict | None = None, others: bool = True
               ) -> list[xr.Dataset]:
    """The main run and (``others``) every other complete run of the store on the same model (any
    method, layer), without the change vectors (the largest arrays; not drawn)."""
    from kisstore.edit.run import EDITS
    from kisstore.store.io import Store

    st = Store(store, storage_options or {}, read_only=True)
    tree = st.open_tree()
    if EDITS not in tree.children:
        return []
    runs = tree[EDITS]
    vectors = ["predicted_change", "measured_change"]
    main = runs[main_run].ds.drop_vars(vectors, errors="ignore").load()
    out = [main]
    for name, node in runs.children.items() if others else ():
        attrs = node.attrs
        if name == main_run or attrs.get("complete") is not True:
            continue
        if attrs.get("model_id") == main.attrs.get("model_id"):
            out.append(node.ds.drop_vars(vectors, errors="ignore").load())
    return out


def complete_runs(store: str, storage_options: dict | None = None, model: str | None = None,
                  names: Sequence[str] = ()) -> list[str]:
    """The runs ``kisstore edit-report`` draws: ``names`` (each must be a complete run of the store,
    on ``model`` when given) or every complete run of ``model`` (default: the one model with runs)."""
    from kisstore.edit.run import EDITS
    from kisstore.errors import InputError, StoreError
    from kisstore.store import layout
    from kisstore.store.io import Store
    from kisstore.store.urls import redact

    st = Store(store, storage_options or {}, read_only=True)
    if not st.exists():
        raise StoreError(f"no store at {redact(store, storage_options or {})}")
    st.validate()
    runs = {}
    if st.has(EDITS):
        from kisstore.store.commit import _children

        for name in sorted(_children(st, EDITS)):
            attrs = st.group_attrs(f"{EDITS}/{name}") if st.has(f"{EDITS}/{name}") else {}
            if attrs.get("complete") is True:
                runs[name] = str(attrs.get("model_id"))
    if not runs:
        raise InputError("the store holds no complete edit run (/edits); run kisstore edit first")
    want = layout.sanitize_model_id(model) if model is not None else None
    if want is not None and want not in runs.values():
        raise InputError(f"the store has no edit run on model {want!r} (runs on: {', '.join(sorted(set(runs.values())))})")
    for name in names:
        if name not in runs:
            raise InputError(f"no complete run {name!r} under /edits (runs: {', '.join(runs)})")
        if want is not None and runs[name] != want:
            raise InputError(f"run {name!r} is on model {runs[name]!r}, not {want!r}")
    if names:
        return list(dict.fromkeys(names))
    models = sorted(set(runs.values()))
    if want is None and len(models) > 1:
        raise InputError(f"the store has edit runs on {len(models)} models ({', '.join(models)}); pass --model")
    want = want or models[0]
    return [name for name, m in runs.items() if m == want]
