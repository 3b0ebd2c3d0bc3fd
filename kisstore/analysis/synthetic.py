"""Small synthetic stores with known structure, for tests, docs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from kisstore.store import Store, layout


def synthetic_model(
    rng: np.random.Generator, n_items: int, d_ff: int, n_layers: int, n_samples: int | None = None
) -> dict[str, np.ndarray]:
    """Keys (layer, item, d_ff) float32 sharing a low-rank component (so P has structure) and
    covariances (layer, d_ff, d_ff) from ``n_samples`` random vectors per layer (well conditioned)."""
    n_samples = n_samples or 16 * d_ff
    keys = np.empty((n_layers, n_items, d_ff), np.float32)
    cov = np.empty((n_layers, d_ff, d_ff), np.float64)
    for layer in range(n_layers):
        mix = rng.standard_normal((d_ff, d_ff)) / np.sqrt(d_ff) + np.eye(d_ff)
        shared = rng.standard_normal((3, d_ff))
        keys[layer] = (rng.standard_normal((n_items, 3)) @ shared * (0.3 + 0.1 * layer)
                       + rng.standard_normal((n_items, d_ff))).astype(np.float32)
        x = rng.standard_normal((n_samples, d_ff)) @ mix
        cov[layer] = x.T @ x / n_samples
    return {"keys": keys, "cov": cov, "n_tokens": np.full(n_layers, n_samples, np.int64)}


def items_dataset(case_ids: Sequence[int], subjects: Sequence[str] | None = None) -> xr.Dataset:
    """An /items dataset with made-up CounterFact-like text for ``case_ids`` (``subjects`` may repeat)."""
    ids = np.asarray(case_ids, dtype=np.int64)
    text = {
        "subject": list(subjects) if subjects is not None else [f"Subject {c}" for c in ids],
        "prompt": [f"{{}} was born in {c}" for c in ids],
        "relation_id": [f"P{c % 7}" for c in ids],
        "target_true": [f"City{c}" for c in ids],
        "target_new": [f"Town{c}" for c in ids],
    }
    return xr.Dataset({k: ("item", np.array(v, dtype=object)) for k, v in text.items()}, coords={"item": ids})


def model_dataset(arrays: dict[str, np.ndarray], case_ids: Sequence[int],
                  known: np.ndarray | None = None, layers: Sequence[int] | None = None,
                  key_token_id: Sequence[int] | None = None) -> xr.Dataset:
    """The /models/<id> dataset for arrays from ``synthetic_model`` (with ``key_token_id`` and a
    made-up ``key_token`` when given, as extract writes them)."""
    n_layers, n_items, _ = arrays["keys"].shape
    known = np.ones(n_items, bool) if known is None else np.asarray(known, bool)
    ds = _model_arrays(arrays, case_ids, known, layers, n_items, n_layers)
    if key_token_id is not None:
        tok = np.asarray(key_token_id, dtype=np.int64)
        ds["key_token_id"] = ("item", tok)
        ds["key_token"] = ("item", np.array([f"tok{t}" for t in tok], dtype=object))
    return ds


def _model_arrays(arrays, case_ids, known, layers, n_items, n_layers) -> xr.Dataset:
    return xr.Dataset(
        {
            layout.KEY: (("layer", "item", "d_ff"), arrays["keys"], {"long_name": "synthetic key"}),
            "cov": (("layer", "d_ff", "d_ff_"), arrays["cov"]),
            "n_tokens": ("layer", arrays["n_tokens"]),
            "known": ("item", known),
            "p_true": ("item", np.linspace(0.1, 0.9, n_items).astype(np.float32)),
        },
        coords={"layer": np.asarray(layers if layers is not None else range(n_layers), dtype=np.int64),
                "item": np.asarray(case_ids, dtype=np.int64)},
    )


def write_synthetic_store(
    path: str,
    models: dict[str, dict[str, Any]] | None = None,
    n_items: int = 40,
    seed: int = 0,
    subjects: Sequence[str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Write a store with /items and one /models/<id> per entry of ``models``.

    ``models`` maps a model id to options: ``d_ff``, ``n_layers``, ``known`` (bool mask),
    ``n_params``, ``family``, ``complete`` (default True), ``key_token_id`` (item,) ints.
    ``subjects``: the items' subjects (default all distinct). Returns the arrays written.
    """
    models = models or {"tiny": {}}
    rng = np.random.default_rng(seed)
    case_ids = np.arange(1000, 1000 + 3 * n_items, 3, dtype=np.int64)
    store = Store(path)
    store.init()
    store.write_dataset("items", items_dataset(case_ids, subjects))
    written = {}
    for name, opt in models.items():
        n_layers = int(opt.get("n_layers", 3))
        arrays = synthetic_model(rng, n_items, int(opt.get("d_ff", 12)), n_layers)
        store.write_dataset(f"models/{name}", model_dataset(arrays, case_ids, opt.get("known"),
                                                                 key_token_id=opt.get("key_token_id")))
        store.set_attrs(f"models/{name}", {
            "model_id": name, "architecture": opt.get("family", "synthetic"), "family": opt.get("family", "synthetic"),
            "n_params": int(opt.get("n_params", 1000 * n_layers)), "n_layers": n_layers,
            "d_ff": int(opt.get("d_ff", 12)), "complete": bool(opt.get("complete", True)),
        })
        written[name] = {**arrays, "case_ids": case_ids}
    store.consolidate()
    return written
