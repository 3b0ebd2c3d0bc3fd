"""Crash-safe extraction state inside the store (``/_checkpoints/<model-id>``).

Arrays are written first, the JSON state that points at them last, so a kill at any
moment leaves the previous committed state intact:

- ``items_keys``, ``items_known``, ``items_p_true``: the item pass, written once;
- ``done``: (layer, d_ff·(d_ff+1)/2) raw sums of finished layer groups, each layer written once;
- ``partial_0`` / ``partial_1``: the running group's sums, alternating slots; the state
  names the slot that holds the last committed one.

The sums are float64 lower triangles in the packed layout of ``kisstore.store.packed``
(row j's S[j, 0..j] from j(j+1)/2 on): half a full matrix, and the same for either kernel
path. The group's ``sums_layout`` attribute names it. A checkpoint without it holds full
d_ff × d_ff sums (kisstore before packed accumulators): it is never read as packed; the
extraction starts over, with a message (the only loss is the interrupted run's progress).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kisstore import failpoints
from kisstore.errors import StoreError
from kisstore.store.chunking import tile_edge
from kisstore.store.io import Store, default_compressors, storage_errors
from kisstore.store.layout import checkpoint_path
from kisstore.store.packed import LAYOUT, PackedMoment, packed_size


class Checkpoint:
    def __init__(self, store: Store, model_id: str, fingerprint: dict[str, Any],
                 guard: Callable[[], None] | None = None, overwrite: bool = False):
        self.store = store
        self.overwrite = overwrite  # an --overwrite run's: resumed by the same command, not cleared
        self.path = checkpoint_path(model_id)
        self.fingerprint = fingerprint
        self.state: dict[str, Any] = {}
        self.restarted_old_layout = False  # set by open(): a full-matrix checkpoint was found and started over
        self.guard = guard or (lambda: None)  # called before every write: raises to stop it (the writer's lease)

    # -- lifecycle --------------------------------------------------------------------
    def open(self, layers: Sequence[int], d: int) -> dict[str, Any]:
        """Open or create; returns the committed state ({} when starting fresh)."""
        self.guard()
        self.layers = list(layers)
        self.d = d
        with storage_errors(self.store.url, self.store.storage_options):
            attrs = self.store.group_attrs(self.path) if self.store.has(self.path) else {}
            if "fingerprint" in attrs:  # written last: a checkpoint without it never started
                g = self.store.open_group(self.path, mode="r+")
                stored = {k: v for k, v in (attrs.get("fingerprint") or {}).items()
                          if k != "n_candidates"}  # kept by kisstore 0.1.0; the items' case ids now align
                if stored != _plain(self.fingerprint):
                    diff = _diff(stored, _plain(self.fingerprint))
                    raise StoreError(
                        f"the store holds an unfinished extraction of this model with other settings "
                        f"({diff}); rerun with the same options to resume, or pass --overwrite to start over"
                    )
                if attrs.get("sums_layout") == LAYOUT:
                    self.group = g
                    self.state = dict(attrs.get("state") or {})
                    return self.state
                # full d_ff × d_ff sums of an earlier kisstore: never read as packed ones, started over
                self.restarted_old_layout = True
            self.store.check_links(self.path)  # mode "w" deletes what is there first
            g = self.store.open_group(self.path, mode="w")
            n = len(self.layers)
            for name in ("done", "partial_0", "partial_1"):
                create_sums(g, name, n, d)
            # the fingerprint last, in one write: it marks the checkpoint as started
            g.attrs.update({"fingerprint": _plain(self.fingerprint), "state": {}, "overwrite": self.overwrite,
                            "sums_layout": LAYOUT})
            self.group = g
            self.state = {}
            return self.state

    @staticmethod
    def of_this_overwrite(store: Store, model_id: str, fingerprint: dict[str, Any]) -> bool:
        """Whether the stored checkpoint was made by an --overwrite run with these settings."""
        attrs = store.group_attrs(checkpoint_path(model_id))
        return attrs.get("overwrite") is True and attrs.get("fingerprint") == _plain(fingerprint)

    def commit(self, **changes: Any) -> None:
        self.state.update(changes)
        with storage_errors(self.store.url, self.store.storage_options):
            self.group.attrs["state"] = _plain(self.state)

    def delete(self) -> None:
        """Remove this model's checkpoint, and the ``/_checkpoints`` group once it is empty."""
        self.store.delete(self.path)
        parent = self.path.rsplit("/", 1)[0]
        with storage_errors(self.store.url, self.store.storage_options):
            g = self.store.open_group(parent)
            if not any(True for _ in g.groups()) and not any(True for _ in g.arrays()):
                self.store.delete(parent)

    # -- item pass ----------------------------------------------------------------------
    def save_items(self, keys: np.ndarray, known: np.ndarray, p_true: np.ndarray, case_ids: Sequence[int]) -> None:
        self.guard()
        with storage_errors(self.store.url, self.store.storage_options):
            for name, arr, chunks, dims in (
                ("items_keys", keys, (1,) + keys.shape[1:], ("layer_row", "candidate", "d_ff")),
                ("items_known", known, known.shape, ("candidate",)),
                ("items_p_true", p_true, p_true.shape, ("candidate",)),
                ("items_case_id", np.asarray(case_ids, dtype=np.int64), (len(case_ids),), ("candidate",)),
            ):
                a = self.group.create_array(name, shape=arr.shape, chunks=chunks, dtype=arr.dtype,
                                            compressors=default_compressors(), overwrite=True,
                                            dimension_names=dims)
                a[...] = arr
        self.commit(items_done=True)

    def load_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        g = self.group
        return (g["items_keys"][...], g["items_known"][...], g["items_p_true"][...], g["items_case_id"][...])

    # -- sums ---------------------------------------------------------------------------
    def save_partial(self, rows: Sequence[int], sums: Iterable[np.ndarray], **state: Any) -> None:
        """Write the running group's sums into the free slot, then commit the state."""
        self.guard()
        slot = 1 - int(self.state.get("slot", 1))
        with storage_errors(self.store.url, self.store.storage_options):
            arr = self.group[f"partial_{slot}"]
            for r, u in zip(rows, sums, strict=True):
                arr[r] = u
                failpoints.hit("checkpoint_write")
        self.commit(slot=slot, **state)

    def load_partial(self, rows: Sequence[int]) -> list[np.ndarray]:
        arr = self.group[f"partial_{int(self.state['slot'])}"]
        return [arr[r] for r in rows]

    def save_done(self, rows: Sequence[int], moments: Iterable[PackedMoment], **state: Any) -> None:
        """Write finished layers' moments (their sums into ``done``, their counts into the state), then commit."""
        self.guard()
        done = dict(self.state.get("done_counts") or {})
        with storage_errors(self.store.url, self.store.storage_options):
            arr = self.group["done"]
            for r, m in zip(rows, moments, strict=True):
                arr[r] = m.tril
                done[str(r)] = int(m.count)
        self.commit(done_counts=done, **state)

    def load_done(self, row: int) -> PackedMoment:
        """The finished moment of layer row ``row``."""
        return PackedMoment(self.group["done"][row], int(self.state["done_counts"][str(row)]))


def create_sums(group, name: str, n: int, d: int):
    """A (layers, packed triangle) float64 array of raw sums, in tiles of a ``cov`` tile's size."""
    size = packed_size(d)
    return group.create_array(name, shape=(n, size), chunks=(1, min(size, tile_edge() ** 2)), dtype="float64",
                              compressors=default_compressors(), fill_value=0.0,
                              dimension_names=("layer_row", "packed_tril"))  # xarray can open the store


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(changed[:3]) or "unknown"
