"""Describe a store: groups, arrays, provenance, completeness; verify every chunk."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.io import Store, storage_errors

STALE_AFTER_S = 3600.0
EDITS = "edits"  # kisstore.edit.run.EDITS (not imported: it pulls in the editing code)


def describe(store: Store) -> dict[str, Any]:
    """A JSON-able summary: root attrs, items, each model's status, arrays and provenance."""
    attrs = store.validate()
    root = store.root()
    out: dict[str, Any] = {"url": store.url, "attrs": attrs, "items": None, "models": {}, "analysis": {},
                           "edits": {}, "in_progress": {}}
    with storage_errors(store.url, store.storage_options):
        if layout.ITEMS in root:
            g = root[layout.ITEMS]
            out["items"] = {"n": int(g["item"].shape[0]), **dict(g.attrs)}
        if layout.MODELS in root:
            for name, g in sorted(root[layout.MODELS].groups()):
                a = dict(g.attrs)
                arrays = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in g.arrays()}
                status = "complete" if a.get("complete") is True else "incomplete"
                out["models"][name] = {"status": status, "arrays": arrays, "provenance": a}
        if layout.ANALYSIS in root:
            out["analysis"] = {name: _analysis_summary(g) for name, g in sorted(root[layout.ANALYSIS].groups())}
        out["analyses"] = _analyses(root)
        if EDITS in root:
            out["edits"] = {name: _edit_summary(g) for name, g in sorted(root[EDITS].groups())}
        if layout.CHECKPOINTS in root:
            for name, g in sorted(root[layout.CHECKPOINTS].groups()):
                state = dict(g.attrs.get("state") or {})
                age = checkpoint_age(store, f"{layout.CHECKPOINTS}/{name}")
                stale = age is not None and age > STALE_AFTER_S
                out["in_progress"][name] = {
                    "status": "stale" if stale else "in progress",
                    "seconds_since_checkpoint": None if age is None else round(age),
                    "items_done": bool(state.get("items_done")),
                    "layers_done": len(state.get("done_counts") or {}),
                    "tokens_in_running_pass": state.get("tokens", 0),
                }
        out["edits_in_progress"] = _edit_checkpoints(store)
    return out


def _edit_checkpoints(store: Store) -> dict[str, Any]:
    """Every edit run with a checkpoint (a run killed or still running): its newest complete step.

    Staging is never consolidated, so it is listed from the store itself."""
    from kisstore.store.commit import _children

    if not store.has(layout.EDIT_CHECKPOINTS):
        return {}
    out = {}
    for run in sorted(_children(store, layout.EDIT_CHECKPOINTS)):
        base = f"{layout.EDIT_CHECKPOINTS}/{run}"
        steps = sorted(int(n[1:]) for n in _children(store, base) if n.startswith("s") and n[1:].isdigit()
                       and store.has(f"{base}/{n}") and store.group_attrs(f"{base}/{n}").get("complete") is True)
        age = checkpoint_age(store, f"{base}/s{steps[-1]:06d}") if steps else None
        stale = age is not None and age > STALE_AFTER_S
        out[run] = {"status": "stale" if stale else "in progress", "step": steps[-1] if steps else None,
                    "seconds_since_checkpoint": None if age is None else round(age)}
    return out


def _coord(group: zarr.Group, name: str) -> list | None:
    if name in group and isinstance(group[name], zarr.Array) and group[name].ndim == 1:
        return [v.item() if hasattr(v, "item") else v for v in group[name][:]]
    return None


def _analysis_summary(g: zarr.Group) -> dict[str, Any]:
    """One /analysis/<model>: its layers and the settings kisstore.analysis.core recorded."""
    a = dict(g.attrs)
    if "model" not in a:  # /analysis/scaling: the table over models
        n = next((int(arr.shape[0]) for _, arr in g.arrays() if arr.ndim), 0)
        return {"kind": "scaling table", "rows": n}
    return {"kind": "model", "model": a.get("model"), "layers": _coord(g, "layer"), "n_items": a.get("n_items"),
            "items": a.get("items"), "ridge": a.get("ridge"), "top_k": a.get("top_k"),
            "source": a.get("source"), "settings": a.get("settings")}


def _analyses(root: zarr.Group) -> dict[str, Any]:
    """Every analysis by name ("default" for /analysis, else /analyses/<name>): its path, its
    settings (those of its models, which one analysis shares) and per model its summary."""
    groups = []
    if layout.ANALYSIS in root:
        groups.append((layout.DEFAULT_ANALYSIS, layout.ANALYSIS, root[layout.ANALYSIS]))
    if layout.ANALYSES in root:
        groups += [(name, f"{layout.ANALYSES}/{name}", g) for name, g in sorted(root[layout.ANALYSES].groups())]
    out = {}
    for name, path, g in groups:
        parts = {m: _analysis_summary(sub) for m, sub in sorted(g.groups())}
        models = {m: p for m, p in parts.items() if p["kind"] == "model"}
        settings = next((p["settings"] for p in models.values() if p.get("settings")), None)
        if settings is None and models:  # written by kisstore 0.1: what its attrs say
            first = next(iter(models.values()))
            settings = {"items": first["items"], "ridge": first["ridge"], "top_k": first["top_k"],
                        "written_by": "kisstore 0.1"}
        scaling_rows = next((p["rows"] for p in parts.values() if p["kind"] == "scaling table"), None)
        out[name] = {"path": f"/{path}", "settings": settings, "models": models, "scaling_rows": scaling_rows}
    return out


def analyses_summary(store: Store) -> dict[str, Any]:
    """``describe(store)["analyses"]`` alone (see ``_analyses``)."""
    with storage_errors(store.url, store.storage_options):
        return _analyses(store.root())


def _edit_summary(g: zarr.Group) -> dict[str, Any]:
    """One /edits/<run>: method, layer(s), edits, steps (a batched method edits ``batch`` facts a
    step), tracked facts and whether it was finished."""
    a = dict(g.attrs)
    edits, batch = a.get("edits"), a.get("batch")
    steps = -(-edits // batch) if isinstance(edits, int) and isinstance(batch, int) and batch > 0 else edits
    return {"model": a.get("model_id"), "method": a.get("method"), "layer": a.get("layer"),
            "layers": a.get("layers"), "batch": a.get("batch"), "edits": a.get("edits"),
            "steps": steps, "tracked": a.get("tracked"), "complete": a.get("complete") is True}


def checkpoint_age(store: Store, path: str) -> float | None:
    """Seconds since the checkpoint's state was last committed, where the storage tells."""
    modified = store.backend.modified(f"{path}/zarr.json")
    return None if modified is None else time.time() - modified


def verify(store: Store, progress: bool = True) -> list[str]:
    """Check every node's own metadata against its consolidated copy, then read every chunk of
    every array (checksum, presence, position against the chunk manifest); return the problems
    found (empty when intact)."""
    from kisstore.store import integrity
    from kisstore.store.io import _sync

    store.validate()
    problems: list[str] = []
    meta = integrity.root_metadata(store)
    nodes = integrity.consolidated(meta)
    with storage_errors(store.url, store.storage_options):
        meta_problems, bad = integrity.metadata_problems(store, meta)
    problems.extend(meta_problems)
    root = store.root()

    def walk(group: zarr.Group, prefix: str):
        complete = group.attrs.get(layout.EVERY_CHUNK_WRITTEN) is True
        for name, arr in group.arrays():
            path = f"{prefix}{name}"
            if path.strip("/") in bad:
                continue  # its metadata is already reported; its chunks cannot be trusted to it
            node = nodes.get(path.strip("/")) or arr.metadata.to_dict()
            manifest = integrity.manifest_of(node) if integrity.has_crc32c(node) else None
            for idx, key in integrity.chunk_keys(node):
                raw = _sync(integrity._get(store.zstore, f"{arr.path}/{key}"))
                if raw is None and complete:  # zarr would read the fill value
                    problems.append(f"{path} chunk {idx}: missing (its file is gone)")
                    continue
                # the object's extent: a chunk, or a shard of chunks (store.chunking)
                grid = node["chunk_grid"]["configuration"]["chunk_shape"]
                sel = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, grid, strict=True))
                what = "shard" if integrity.sharding(node) else "chunk"
                try:
                    arr[sel]
                    bad_shard = None if raw is None else integrity.shard_problem(raw, node)
                    if bad_shard:
                        raise ValueError(bad_shard)
                except Exception as e:  # checksum mismatch, truncated or missing chunk
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    problems.append(f"{path} {what} {idx}: {first}")
                    continue
                if manifest is not None and raw is not None and manifest.get(key) != integrity.digest_of(raw, node):
                    problems.append(f"{path} {what} {idx}: does not match its manifest (swapped or replaced)")
            stated = (node.get("attributes") or {}).get(layout.INDEX_VALUES)
            if stated is not None and not _same_values(arr, stated):  # what open_store labels with
                problems.append(f"{path}: its {layout.INDEX_VALUES} attribute differs from its data")
        for name, sub in group.groups():
            if prefix == "/" and name == layout.STAGING:
                continue  # an interrupted analysis's scratch, not part of the store (removed by the next run)
            if f"{prefix}{name}".strip("/") in bad:
                continue
            walk(sub, f"{prefix}{name}/")

    with storage_errors(store.url, store.storage_options):
        walk(root, "/")
    return problems


def _same_values(arr, stated) -> bool:
    """Whether the 1-D array ``arr`` holds exactly the list ``stated`` (store.indexes)."""
    try:
        return arr.ndim == 1 and np.asarray(arr[...]).tolist() == stated
    except Exception:  # unreadable: its chunks are reported already
        return True


def _chunk_slices(arr):
    import itertools

    if arr.ndim == 0:
        yield ()
        return
    ranges = [range(0, n, c) for n, c in zip(arr.shape, arr.chunks, strict=True)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, s + c) for s, c in zip(starts, arr.chunks, strict=True))


def _chunk_exists(store: Store, arr, sel) -> bool:
    from kisstore.store.io import _sync

    key = arr.metadata.encode_chunk_key(_chunk_index(arr, sel)) if arr.ndim else arr.metadata.encode_chunk_key(())
    return bool(_sync(store.zstore.exists(f"{arr.path}/{key}")))


def _chunk_index(arr, sel) -> tuple[int, ...]:
    return tuple(s.start // c for s, c in zip(sel, arr.chunks, strict=True))


def require(store: Store) -> None:
    if not store.exists():
        raise StoreError(f"no kisstore store at {store.url}")
