"""Which models, layers and items an analysis covers (validated against the store)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from kisstore.errors import InputError, StoreError
from kisstore.layers import parse_layers
from kisstore.store import layout

ITEM_SUBSETS = ("all", "known", "intersect")


def complete_models(tree: xr.DataTree) -> list[str]:
    """Model groups under /models whose ``complete`` attribute is true (others are ignored)."""
    if layout.MODELS not in tree.children:
        return []
    models = tree[layout.MODELS]
    return sorted(name for name, node in models.children.items() if node.attrs.get("complete") is True)


def select_models(tree: xr.DataTree, models: str | Sequence[str] | None) -> list[str]:
    """The requested model groups (all complete ones by default); unknown names are an InputError."""
    available = complete_models(tree)
    if not available:
        raise StoreError("the store holds no complete model under /models: run `kisstore extract` first")
    if models is None or (not isinstance(models, str) and len(models) == 0):
        return available
    wanted = [models] if isinstance(models, str) else list(models)
    for m in wanted:
        if m not in available:
            incomplete = m in (tree[layout.MODELS].children if layout.MODELS in tree.children else {})
            why = " (its extraction is not complete)" if incomplete else ""
            raise InputError(f"unknown model {m!r}{why}; the store has: {', '.join(available)}")
    return list(dict.fromkeys(wanted))


def model_dataset(tree: xr.DataTree, model: str) -> xr.Dataset:
    """The model's dataset, checked for the arrays the analysis needs; its keys are always
    ``key`` (a schema-1 store's ``keys`` is renamed on reading, see ``layout.current_names``)."""
    ds = layout.current_names(tree[f"{layout.MODELS}/{model}"].to_dataset())
    if "cov" not in ds:
        raise StoreError(
            f"model {model!r} has no covariances (`cov`) in the store: rerun `kisstore extract` "
            "with a corpus, or import covariances"
        )
    for name in (layout.KEY, "n_tokens"):
        if name not in ds:
            raise StoreError(f"model {model!r} has no `{name}` array in the store")
    check_shapes(ds, model)
    return ds


_EXPECTED = {layout.KEY: ("layer", "item", "d_ff"), "cov": ("layer", "d_ff", "d_ff_"), "n_tokens": ("layer",)}


def check_shapes(ds: xr.Dataset, model: str) -> None:
    """Refuse arrays whose dims, dtypes or sizes do not fit the layout (another tool, a bad edit)."""
    for name, dims in _EXPECTED.items():
        var = ds[name]
        if var.dims != dims:
            raise StoreError(f"model {model!r}: `{name}` has dims {var.dims}, expected {dims}")
    if not np.issubdtype(ds[layout.KEY].dtype, np.floating) or not np.issubdtype(ds["cov"].dtype, np.floating):
        raise StoreError(f"model {model!r}: `{layout.KEY}`/`cov` must be floating point, found "
                         f"{ds[layout.KEY].dtype}/{ds['cov'].dtype}")
    if not np.issubdtype(ds["n_tokens"].dtype, np.integer):
        raise StoreError(f"model {model!r}: `n_tokens` must be integer, found {ds['n_tokens'].dtype}")
    if ds.sizes["d_ff"] != ds.sizes["d_ff_"]:
        raise StoreError(f"model {model!r}: `cov` is not square ({ds.sizes['d_ff']} × {ds.sizes['d_ff_']})")


def select_layers(ds: xr.Dataset, model: str, layers: str | Sequence[int] | None) -> list[int]:
    """Layer indices from a spec ('all', '0-5', '0,3,7', '-1', '0-29:2') or a list of ints."""
    stored = [int(x) for x in ds["layer"].values]
    n_layers = int(ds.attrs.get("n_layers", max(stored) + 1 if stored else 0))
    if layers is None or (isinstance(layers, str) and layers.strip().lower() in ("", "all")):
        wanted = sorted(stored)  # "all" means every layer the store holds (extract --layers may have picked some)
    elif isinstance(layers, str):
        wanted = parse_layers(layers, n_layers)
    else:
        wanted = sorted({int(x) + n_layers if int(x) < 0 else int(x) for x in layers})
    missing = [x for x in wanted if x not in stored]
    if missing:
        raise InputError(
            f"model {model!r}: layer(s) {', '.join(map(str, missing))} not in the store "
            f"(stored layers: {_ranges(stored)})"
        )
    if not wanted:
        raise InputError(f"model {model!r}: the layer selection {layers!r} is empty")
    return wanted


def _known(tree: xr.DataTree, model: str) -> np.ndarray:
    ds = tree[f"{layout.MODELS}/{model}"].to_dataset()
    if "known" not in ds:
        raise StoreError(f"model {model!r} has no `known` array; use --items all")
    return ds["item"].values[np.asarray(ds["known"].values, dtype=bool)]


def select_items(tree: xr.DataTree, model: str, items: str = "all", n_items: int | None = None) -> np.ndarray:
    """Case ids (in store order) of the items to analyse for ``model``.

    ``all``: every item; ``known``: items the model knows; ``intersect``: items every
    complete model in the store knows (the paper's choice). Then the first ``n_items``.
    Only ``known``/``intersect`` read data (the N-long ``known`` flags).
    """
    if items not in ITEM_SUBSETS:
        raise InputError(f"bad item subset {items!r}: expected one of {', '.join(ITEM_SUBSETS)}")
    case_ids = tree[f"{layout.MODELS}/{model}"]["item"].values
    if items == "known":
        keep = set(_known(tree, model).tolist())
        case_ids = np.array([c for c in case_ids if c in keep], dtype=case_ids.dtype)
    elif items == "intersect":
        keep = set(case_ids.tolist())
        for other in complete_models(tree):
            keep &= set(_known(tree, other).tolist())
        case_ids = np.array([c for c in case_ids if c in keep], dtype=case_ids.dtype)
    what = {"all": "items", "known": f"items {model!r} knows",
            "intersect": "items every model in the store knows"}[items]
    if case_ids.size == 0:
        raise InputError(f"model {model!r}: the subset '{items}' is empty (no {what})")
    if n_items is not None:
        if n_items < 2:
            raise InputError(f"--n-items must be at least 2 (pairs need two items), got {n_items}")
        if n_items > case_ids.size:
            raise InputError(
                f"model {model!r}: asked for {n_items} items but only {case_ids.size} {what} are available"
            )
        case_ids = case_ids[:n_items]
    if case_ids.size < 2:
        raise InputError(f"model {model!r}: the subset '{items}' has {case_ids.size} item; pairs need two")
    return case_ids


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)
