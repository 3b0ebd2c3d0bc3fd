"""Print the rankings, per-fact and within/between-relation tables of docs/analysis.md (markdown).

    python scripts/ranking_tables.py STORE [--model M] [--layers 0,5,10,15,20,25,29] [--pair-layers 0,25] [--top 10]

Reads ``/analysis/<model>`` (written by ``kisstore analyze``) and the key tokens of
``/models/<model>`` with plain xarray; nothing is recomputed.
"""

from __future__ import annotations

import argparse

import numpy as np

from kisstore.store import open_store


def _ci(ds, var, **sel) -> str:
    v = float(ds[var.replace("_ci", "")].sel(**sel))
    if var not in ds:
        return f"{v:.3g}"
    lo, hi = (float(ds[var].sel(**sel, bound=b)) for b in ("low", "high"))
    return f"{v:.3g} [{lo:.3g}, {hi:.3g}]"


def _pci(d, pair_set, stat) -> str:
    """P's statistic in a pair set with its interval (pair_stats_ci holds P only)."""
    v = float(d["pair_stats"].sel(quantity="p_matrix", pair_set=pair_set, stat=stat))
    if "pair_stats_ci" not in d:
        return f"{v:.3g}"
    lo, hi = (float(d["pair_stats_ci"].sel(pair_set=pair_set, stat=stat, bound=b)) for b in ("low", "high"))
    return f"{v:.3g} [{lo:.3g}, {hi:.3g}]"


def summary_table(ds, layers) -> str:
    head = ("| layer | P excess kurtosis [95 % CI] | without same-token pairs | same-token pairs | "
            "top-20 same token / subject / relation | P outside KDE grid | cond (1-norm est.) / cond_2norm |")
    rows = [head, "|" + "---|" * 7]
    for lay in layers:
        d = ds.sel(layer=lay)
        k = "excess_kurtosis"
        tok = f"{int(d['top_same_token'].sum())}" if "top_same_token" in d else "n/a"
        rows.append(
            f"| {lay} | {_ci(d, 'stats_ci', quantity='p_matrix', stat=k)} "
            f"| {_pci(d, 'different_token', k)} "
            f"| {int(ds['pair_count'].sel(pair_set='same_token'))} "
            f"| {tok} / {int(d['top_same_subject'].sum())} / {int(d['top_same_relation'].sum())} "
            f"| {float(d['kde_outside'].sel(quantity='p_matrix')):.2%} "
            f"| {float(d['cond']):.3g} / {float(d['cond_2norm']):.3g} ({float(d['cond']) / float(d['cond_2norm']):.0f}×) |")
    return "\n".join(rows)


def relation_table(ds, layers) -> str:
    rows = ["| layer | pairs | P mean | P std | P excess kurtosis |", "|---|---|---|---|---|"]
    for lay in layers:
        d = ds.sel(layer=lay)
        for s in ("same_relation", "different_relation"):
            cells = [_pci(d, s, st)
                     for st in ("mean", "std", "excess_kurtosis")]
            rows.append(f"| {lay} | {s.replace('_', ' ')} ({int(ds['pair_count'].sel(pair_set=s))}) | "
                        + " | ".join(cells) + " |")
    return "\n".join(rows)


def pairs_table(ds, tokens, lay, top) -> str:
    d = ds.sel(layer=lay)
    rows = [f"Layer {lay} (ranked by {ds.attrs.get('rank_by', 'signed')} P):", "",
            "| rank | P | edited fact (subject, relation) | disturbed fact | key tokens | same token / subject / relation |",
            "|---|---|---|---|---|---|"]
    for r in range(min(top, d.sizes["rank"])):
        i, j = int(d["top_item"][r]), int(d["top_item_"][r])
        tk = (f"`{tokens.get(i, '?')!s}` / `{tokens.get(j, '?')!s}`" if tokens else "n/a")
        flags = "/".join("yes" if bool(d[f"top_same_{w}"][r]) else "no" for w in ("token", "subject", "relation")
                         if f"top_same_{w}" in d)
        rows.append(f"| {r + 1} | {float(d['top_p'][r]):.3f} | {d['top_subject'].values[r]} ({d['top_relation_id'].values[r]}) "
                    f"| {d['top_subject_'].values[r]} ({d['top_relation_id_'].values[r]}) | {tk} | {flags} |")
    return "\n".join(rows)


def exposed_table(ds, items, layers, top) -> str:
    rows = ["| layer | most exposed facts (subject: column sum of squares; worst P suffered, from) |", "|---|---|"]
    for lay in layers:
        d = ds.sel(layer=lay)
        cells = []
        for r in range(min(top, d.sizes["fact_rank"])):
            j = int(d["most_exposed"][r])
            src = int(d["fact_suffered_max_item"].sel(item=j))
            cells.append(f"{items['subject'].sel(item=j).values} ({items['relation_id'].sel(item=j).values}): "
                         f"{float(d['most_exposed_sumsq'][r]):.2f}; {float(d['fact_suffered_max_p'].sel(item=j)):.2f} "
                         f"from {items['subject'].sel(item=src).values}")
        rows.append(f"| {lay} | " + "<br>".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--model", default=None)
    ap.add_argument("--layers", default="0,5,10,15,20,25,29")
    ap.add_argument("--pair-layers", default="0,25")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    tree = open_store(a.store)  # joins the top pairs' text from /items (the store keeps their case ids)
    model = a.model or [m for m in tree["analysis"].children if m != "scaling"][0]
    keep = [v for v in tree[f"analysis/{model}"].to_dataset().data_vars
            if v not in ("gram", "p_matrix", "whitened_cos", "whitened_angle", "activation_cos", "activation_angle",
                         "q_matrix", "kde", "kde_x", "convergence")]
    ds = tree[f"analysis/{model}"].to_dataset()[keep].compute()
    if "stat" in ds.coords:  # kisstore 0.1 called the excess kurtosis "kurtosis"
        ds = ds.assign_coords(stat=["excess_kurtosis" if s == "kurtosis" else str(s) for s in ds["stat"].values])
    m = tree[f"models/{model}"].to_dataset()
    tokens = dict(zip(m["item"].values.tolist(), [str(t) for t in m["key_token"].values], strict=True)) \
        if "key_token" in m else {}
    items = tree["items"].to_dataset().compute()
    layers = [int(x) for x in a.layers.split(",")]
    print(f"{model}: {ds.attrs.get('n_items')} items ({ds.attrs.get('items')}), bootstrap "
          f"{ds.attrs.get('bootstrap_n_boot', 0)} replicates, seed {ds.attrs.get('bootstrap_seed', '-')}\n")
    print(summary_table(ds, layers), "\n")
    for lay in (int(x) for x in a.pair_layers.split(",")):
        print(pairs_table(ds, tokens, lay, a.top), "\n")
    print(relation_table(ds, layers), "\n")
    print(exposed_table(ds, items, layers, 3))
    print()
    worst = np.nanmax(ds["kde_outside"].sel(quantity="p_matrix").values)
    print(f"largest share of P outside its KDE grid: {worst:.3%}; "
          f"cond / cond_2norm: {np.min(ds['cond'] / ds['cond_2norm']).item():.1f}–"
          f"{np.max(ds['cond'] / ds['cond_2norm']).item():.1f}×")


if __name__ == "__main__":
    main()
