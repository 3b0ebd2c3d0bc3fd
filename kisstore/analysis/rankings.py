"""Interference rankings, pair-set statistics, per-fact summaries and bootstrap intervals of one
model's analysis, as lazy xarray variables (the numeric work is in ``pairs``, ``stats`` and
``bootstrap``; ``lift`` maps it over layers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from kisstore.analysis import bootstrap, lift, pairs, stats
from kisstore.errors import InputError
from kisstore.store import layout


@dataclass(frozen=True)
class RankingOptions:
    top_k: int = 20
    rank_by: str = "abs"
    exclude_same_subject: bool = False
    exclude_same_token: bool = False
    n_boot: int = bootstrap.DEFAULT_N_BOOT
    seed: int = 0
    confidence: float = bootstrap.DEFAULT_CONFIDENCE


def check_options(o: RankingOptions) -> None:
    """Refuse bad ranking and bootstrap settings before any work (one-line InputErrors)."""
    if o.rank_by not in pairs.RANK_BY:
        raise InputError(f"--rank must be one of {', '.join(pairs.RANK_BY)}, got {o.rank_by!r}")
    if int(o.top_k) < 1:
        raise InputError(f"--top-k must be ≥ 1, got {o.top_k}")
    if int(o.n_boot) < 0:
        raise InputError(f"--bootstrap must be ≥ 0 (0: no intervals), got {o.n_boot}")
    if not 0 < o.confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {o.confidence}")
    if not 0 <= int(o.seed) < 2 ** 63:
        raise InputError(f"--seed must be a non-negative integer, got {o.seed}")


_NO_TOKENS = ("unavailable: this model's /models group has no key_token_id (extracted before kisstore "
              "kept the key token); the same_token/different_token pair sets are NaN and top_same_token is "
              "absent; extract the model again to have them")


def ranking_variables(p: xr.DataArray, wcos: xr.DataArray, quantities: xr.DataArray, case_ids: np.ndarray,
                      items_ds: xr.Dataset, model_ds: xr.Dataset, o: RankingOptions,
                      sizes: list[int] | None = None) -> tuple[dict[str, xr.DataArray], dict]:
    """The variables (and dataset attrs) that rank and summarise the pairs of one model.

    Everything stays lazy: the per-item labels (subject, relation_id, key token id) are read
    inside each layer's tasks, like the keys."""
    check_options(o)
    text = items_ds.sel(item=case_ids)
    fields = {f: text[f] for f in layout.ITEM_FIELDS if f in text}
    has_tokens = "key_token_id" in model_ds
    if not has_tokens and o.exclude_same_token:
        raise InputError("--exclude-same-token needs the key tokens, which this store does not hold "
                         "(extracted before kisstore kept them): extract the model again")
    n = case_ids.size
    ids = xr.DataArray(case_ids.astype(np.int64), dims=lift.ITEM)
    labels = [fields.get("subject", ids), fields.get("relation_id", ids)]
    if has_tokens:
        labels.append(model_ds["key_token_id"].sel(item=case_ids))
    names = list(pairs.PAIR_SETS)
    sets = {"pair_set": len(names), "stat": len(stats.STAT_NAMES)}

    out: dict[str, xr.DataArray] = {}
    set_coord = {"pair_set": np.array(names, dtype=object)}
    out["pair_count"] = lift.labels_only(pairs.pair_counts, labels, "pair_set", len(names), np.int64
                                         ).assign_coords(set_coord)
    out["pair_stats"] = lift.with_labels(
        lambda m, *lab: stats.describe_sets(m, pairs.masks_from_labels(*lab)), quantities, labels,
        ["pair_set", "stat"], sets).assign_coords(stat=list(stats.STAT_NAMES), **set_coord)
    out["stats"] = out["pair_stats"].isel(pair_set=0, drop=True)  # "all"
    if o.n_boot:
        # every quantity's interval over all pairs; P's also per pair set (the sets' quantiles are
        # most of the cost: all five quantities × seven sets took ~2.5× as long)
        draws = bootstrap.draw_counts(n, int(o.n_boot), int(o.seed))
        bound = {"stat": list(stats.STAT_NAMES), "bound": np.array(["low", "high"], dtype=object)}
        out["stats_ci"] = lift.with_labels(
            lambda m, *lab: bootstrap.matrix_intervals(m, draws, pairs.masks_from_labels(*lab)[:1], o.confidence)[0],
            quantities, labels, ["stat", "bound"], {"stat": len(stats.STAT_NAMES), "bound": 2},
        ).assign_coords(bound)
        out["pair_stats_ci"] = lift.with_labels(
            lambda m, *lab: bootstrap.matrix_intervals(m, draws, pairs.masks_from_labels(*lab), o.confidence),
            p, labels, ["pair_set", "stat", "bound"], {**sets, "bound": 2},
        ).assign_coords({**bound, **set_coord})
        if sizes:  # the convergence curve's points (first n items), each with its interval: P only
            out["convergence_ci"] = lift.with_labels(
                lambda m: bootstrap.convergence_intervals(m, sizes, int(o.n_boot), int(o.seed), o.confidence),
                p, [], ["n_items", "stat", "bound"], {"n_items": len(sizes), "stat": len(stats.STAT_NAMES), "bound": 2},
            ).assign_coords(n_items=np.asarray(sizes, dtype=np.int64), **bound)
        for name in ("pair_stats_ci", "stats_ci") + (("convergence_ci",) if sizes else ()):
            out[name].attrs.update({"confidence": float(o.confidence), "n_boot": int(o.n_boot),
                                    "method": bootstrap.METHOD, "seed": int(o.seed)})
        out["pair_stats_ci"].attrs["quantity"] = "p_matrix"
        if sizes:
            out["convergence_ci"].attrs["quantity"] = "p_matrix"

    k = min(int(o.top_k), n * (n - 1))
    flags = ["same_subject", "same_relation"] + (["same_token"] if has_tokens else [])
    for prefix, value_name, matrix, unordered in (("top", "top_p", p, False), ("top_wcos", "top_wcos", wcos, True)):
        def rank(m, *lab, _u=unordered):
            return pairs.rank_labelled(m, k, *lab, by=o.rank_by, exclude_same_subject=o.exclude_same_subject,
                                       exclude_same_token=o.exclude_same_token, unordered=_u)

        values, rows, cols, *same = lift.ranked_pairs(matrix, k, labels, rank)
        out[value_name] = values
        out[f"{prefix}_item"] = lift.take_or(rows, ids, "rank", -1)
        out[f"{prefix}_item_"] = lift.take_or(cols, ids, "rank", -1)
        for f, vals in fields.items():
            out[f"{prefix}_{f}"] = lift.take_or(rows, vals, "rank", "")
            out[f"{prefix}_{f}_"] = lift.take_or(cols, vals, "rank", "")
        for flag, arr in zip(flags, same, strict=True):
            out[f"{prefix}_{flag}"] = arr

    summary = lift.fact_summary(p)
    out["fact_caused_max_p"] = summary.isel(summary=0, drop=True)
    out["fact_caused_max_item"] = lift.take_or(summary.isel(summary=1, drop=True).astype(np.int64), ids, "item", -1)
    out["fact_suffered_max_p"] = summary.isel(summary=2, drop=True)
    out["fact_suffered_max_item"] = lift.take_or(summary.isel(summary=3, drop=True).astype(np.int64), ids, "item", -1)
    out["fact_caused_sumsq"] = summary.isel(summary=4, drop=True)
    out["fact_suffered_sumsq"] = summary.isel(summary=5, drop=True)
    k_facts = min(int(o.top_k), n)
    for name, score in (("most_exposed", out["fact_suffered_sumsq"]), ("most_disruptive", out["fact_caused_sumsq"])):
        values, pos = lift.top_facts(score, k_facts, "fact_rank")
        out[name] = lift.take_or(pos, ids, "fact_rank", -1)
        out[f"{name}_sumsq"] = values
        if "subject" in fields:
            out[f"{name}_subject"] = lift.take_or(pos, fields["subject"], "fact_rank", "")

    attrs = {
        "rank_by": o.rank_by,
        "rank_excludes": [w for w, on in (("same_subject", o.exclude_same_subject),
                                         ("same_token", o.exclude_same_token)) if on],
        "top_k": k,
        "pair_sets": names,
        "key_tokens": "from the model group's key_token_id (the token id at the key position)" if has_tokens
        else _NO_TOKENS,
        "bootstrap_n_boot": int(o.n_boot),
        "bootstrap_seed": int(o.seed),
        "bootstrap_confidence": float(o.confidence),
        "bootstrap_method": bootstrap.METHOD if o.n_boot else "off (--bootstrap 0)",
    }
    return out, attrs


DESCRIPTIONS = (
    ("pair_count", "", "number of off-diagonal (ordered) pairs in each pair set; -1: the set is unavailable"),
    ("pair_stats", "", "statistics of the off-diagonal entries in each pair set"),
    ("pair_stats_ci", "", "bootstrap confidence interval (over items) of pair_stats for quantity p_matrix"),
    ("stats_ci", "", "bootstrap confidence interval (over items) of stats"),
    ("convergence_ci", "", "bootstrap confidence interval of convergence for quantity p_matrix (the first n items "
     "resampled)"),
    ("top_p", "", "P of the strongest off-diagonal pairs, ranked by rank_by (row item edited, column item disturbed)"),
    ("top_item", "", "case id of the row (edited) fact of each top pair"),
    ("top_item_", "", "case id of the column (disturbed) fact of each top pair"),
    ("top_same_token", "", "the two facts' keys sit on the same token id"),
    ("top_same_subject", "", "the two facts share their subject"),
    ("top_same_relation", "", "the two facts share their relation_id"),
    ("top_wcos", "", "whitened cosine of the strongest pairs (each unordered pair once), ranked by rank_by"),
    ("top_wcos_item", "", "case id of the first fact of each top whitened-cosine pair"),
    ("top_wcos_item_", "", "case id of the second fact of each top whitened-cosine pair"),
    ("top_wcos_same_token", "", "the two facts' keys sit on the same token id"),
    ("top_wcos_same_subject", "", "the two facts share their subject"),
    ("top_wcos_same_relation", "", "the two facts share their relation_id"),
    ("fact_caused_max_p", "", "P_ij (signed) of the largest |P_ij| in the fact's row, j != i: the worst "
                              "interference an edit of fact i causes"),
    ("fact_caused_max_item", "", "case id j of fact_caused_max_p"),
    ("fact_suffered_max_p", "", "P_ij (signed) of the largest |P_ij| in the fact's column, i != j: the worst "
                                "interference fact j suffers from one edit"),
    ("fact_suffered_max_item", "", "case id i of fact_suffered_max_p"),
    ("fact_caused_sumsq", "", "sum over j != i of P_ij^2: expected squared interference an edit of fact i spreads"),
    ("fact_suffered_sumsq", "", "sum over i != j of P_ij^2: expected squared interference fact j takes from "
                                "one edit of every other fact"),
    ("most_exposed", "", "case ids of the facts with the largest fact_suffered_sumsq"),
    ("most_exposed_sumsq", "", "fact_suffered_sumsq of most_exposed"),
    ("most_exposed_subject", "", "subject of most_exposed"),
    ("most_disruptive", "", "case ids of the facts with the largest fact_caused_sumsq"),
    ("most_disruptive_sumsq", "", "fact_caused_sumsq of most_disruptive"),
    ("most_disruptive_subject", "", "subject of most_disruptive"),
)


def describe_all(ds: xr.Dataset) -> None:
    """``long_name`` on every ranking variable (and the text fields of the top pairs)."""
    for name, units, desc in DESCRIPTIONS:
        if name in ds:
            ds[name].attrs.update({"long_name": desc, **({"units": units} if units else {})})
    for prefix, what in (("top", "top pair"), ("top_wcos", "top whitened-cosine pair")):
        for f in layout.ITEM_FIELDS:
            for end, side in (("", "first (row)"), ("_", "second (column)")):
                if f"{prefix}_{f}{end}" in ds:
                    ds[f"{prefix}_{f}{end}"].attrs.setdefault("long_name", f"{f} of the {side} fact of each {what}")
