"""Checkpoints of an edit run in the store, for every method: written every few steps, resumed
by the same command, removed after the run's commit.

A checkpoint is a group ``/_staging/edit-checkpoints/<run>/s<step>`` (the staging area no
reader lists) holding the run's whole state after ``step`` as arrays, its ``settings`` (those
that change the run's arrays) and ``complete``, set after every array is written: a kill in
the middle of a write leaves an incomplete group that is ignored (and overwritten).

Two ways to keep them:

* **whole** (MEMIT/AlphaEdit, kisstore.edit.spread): each checkpoint holds the full state;
  the older ones are dropped once the newest is complete.
* **chained** (ROME/direct, kisstore.edit.run): the (step, item, d_model) change vectors grow by
  one row a step, so writing them whole every few steps would cost O(steps²); a checkpoint holds
  the small state in full and only the rows of the steps since the checkpoint before it
  (``first_step`` … ``step``). :func:`checkpoint_chain` reads the newest complete checkpoint and
  the ones its rows continue, back to step 1.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import xarray as xr

from kisstore.errors import InputError
from kisstore.store import layout
from kisstore.store.io import Store

CHECKPOINTS = layout.EDIT_CHECKPOINTS
Arrays = dict[str, tuple[tuple[str, ...], np.ndarray]]


def checkpoint_root(run: str) -> str:
    return f"{CHECKPOINTS}/{run}"


def _checkpoints(store: Store, run: str) -> list[tuple[int, str, bool]]:
    """(step, path, complete) of every checkpoint group of ``run``, by step."""
    from kisstore.store.commit import _children

    root = checkpoint_root(run)
    if not store.has(root):
        return []
    out = []
    for name in _children(store, root):
        path = f"{root}/{name}"
        if name.startswith("s") and name[1:].isdigit() and store.has(path):
            out.append((int(name[1:]), path, store.group_attrs(path).get("complete") is True))
    return sorted(out)


def discard_checkpoints(store: Store, run: str) -> None:
    """Remove every checkpoint of ``run`` (and the checkpoints folder and /_staging once empty)."""
    from kisstore.store.commit import _children

    if store.has(checkpoint_root(run)):
        store.delete(checkpoint_root(run))
    for parent in (CHECKPOINTS, layout.STAGING):
        if store.has(parent) and not _children(store, parent):
            store.delete(parent)


def _open(store: Store, path: str, settings: dict[str, Any], run: str) -> xr.Dataset:
    ds = store.open_dataset(path)
    if json.loads(ds.attrs.get("settings", "{}")) != settings:
        raise InputError(f"run {run!r} has a checkpoint made with other settings; rerun with the same settings "
                         "to resume it, or pass --overwrite to discard it")
    return ds


def latest_checkpoint(store: Store, run: str, settings: dict[str, Any]) -> xr.Dataset | None:
    """The newest complete checkpoint of ``run`` made with ``settings``, loaded; None if there is none.

    A checkpoint of other settings is refused (its work would be lost silently otherwise)."""
    done = [p for _s, p, ok in _checkpoints(store, run) if ok]
    return _open(store, done[-1], settings, run).load() if done else None


def checkpoint_chain(store: Store, run: str, settings: dict[str, Any]) -> list[xr.Dataset]:
    """The complete chained checkpoints from the first step to the newest, oldest first (loaded);
    [] when there is none, or when the newest cannot be continued back to step 1 (a gap: the run
    starts over rather than resume with rows missing)."""
    done = {s: p for s, p, ok in _checkpoints(store, run) if ok}
    if not done:
        return []
    chain = []
    step = max(done)
    while step > 0:
        if step not in done:
            return []
        ds = _open(store, done[step], settings, run)
        chain.append(ds.load())
        step = int(ds.attrs["first_step"]) - 1
    return chain[::-1]


def write_checkpoint(store: Store, run: str, step: int, arrays: Arrays, settings: dict[str, Any], *,
                     first_step: int | None = None) -> None:
    """Write the state after ``step``, mark it complete, then drop the older checkpoints.

    With ``first_step`` (a chained checkpoint) the older checkpoints are kept: this one's
    per-step rows start at ``first_step`` and the earlier rows are theirs."""
    path = f"{checkpoint_root(run)}/s{step:06d}"
    ds = xr.Dataset({k: (dims, v) for k, (dims, v) in arrays.items()})
    ds.attrs.update({"step": int(step), "settings": json.dumps(settings, sort_keys=True), "complete": False})
    if first_step is not None:
        ds.attrs["first_step"] = int(first_step)
    store.write_dataset(path, ds)
    store.set_attrs(path, {"complete": True})  # set last: a kill before it leaves an ignored partial
    for s, old, ok in _checkpoints(store, run):
        if s != step and (first_step is None or s > step or not ok):
            store.delete(old)  # (chained: a later or unfinished leftover of an earlier attempt)


# -- CounterFact's evaluator in a checkpoint -------------------------------------------------------
def evaluator_arrays(counterfact) -> Arrays:
    """:class:`~kisstore.edit.evaluate.CounterFactEvaluator`'s state as checkpoint arrays."""
    if counterfact is None:
        return {}
    out: Arrays = {}
    for k, v in counterfact.state().items():
        if k.startswith("generation"):
            dims: tuple[str, ...] = ("cf_eval_step", "cf_generation")
        else:
            dims = ("cf_eval_step", "cf_edit", *(() if k.startswith("rewrite") else (f"cf_{k.split('_')[0]}",)))
        out[f"counterfact_{k}"] = (dims, v)
    return out


def load_evaluator(counterfact, ds: xr.Dataset) -> None:
    """Continue ``counterfact`` from the state :func:`evaluator_arrays` put in ``ds``."""
    if counterfact is not None:
        counterfact.load_state({k[len("counterfact_"):]: ds[k].values for k in ds.data_vars
                                if k.startswith("counterfact_")})
