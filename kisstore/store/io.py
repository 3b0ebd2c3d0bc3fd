"""Open, validate and write kisstore stores (local paths and fsspec URLs alike)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from kisstore import failpoints
from kisstore._version import __version__
from kisstore.errors import StoreError
from kisstore.store import chunking, indexes, layout
from kisstore.store.backend import Backend, backend_for
from kisstore.store.errors import storage_errors
from kisstore.store.urls import normalize_s3_options, redact, split_url

warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", message=".*is currently not part in the Zarr format 3 spec")
warnings.filterwarnings("ignore", message="Object at .kisstore-locks is not recognized")
warnings.filterwarnings("ignore", message="Object at commit.json is not recognized")  # a commit's journal



def default_compressors() -> list:
    """Every array is compressed and carries a crc32c checksum, so corruption is detected; zstd's
    own frame checksum as well, for readers that skip crc32c (zarrita.js strips the trailer
    unchecked: with it, 25 of 25 flipped bits were errors instead of 3 of 25; +4 bytes a chunk,
    no measurable time; docs/store-layout.md)."""
    return [ZstdCodec(level=3, checksum=True), Crc32cCodec()]


def default_chunks(dims: tuple[str, ...], shape: tuple[int, ...], dtype: Any = np.float64) -> tuple[int, ...]:
    """The chunk shape store.chunking gives an array (shards aside): see that module."""
    return chunking.chunking(dims, shape, dtype).chunks


class Store:
    """A handle on one kisstore store: its URL, options and the Zarr store underneath."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None, *, read_only: bool = False):
        scheme, rest = split_url(url)
        self.url = url
        self.scheme = scheme
        self.storage_options = dict(storage_options or {})
        self.read_only = read_only
        self._backend: Backend | None = None
        failpoints.watch_store_writes()  # crash-safety tests only (KISSTORE_FAILPOINT=write:n)
        with storage_errors(url, self.storage_options):
            if scheme == "file":
                path = rest if url.startswith("file://") else url
                self.zstore = zarr.storage.LocalStore(path, read_only=read_only)
            else:
                opts = normalize_s3_options(self.storage_options) if scheme == "s3" else dict(self.storage_options)
                self.zstore = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=read_only)

    # -- inspection -------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store's root group exists; a missing S3 bucket is an error, not False."""
        with storage_errors(self.url, self.storage_options):
            found = _sync(self.zstore.exists("zarr.json"))
            if not found and self.scheme == "s3":
                self._check_bucket()
            return found

    def _check_bucket(self) -> None:
        self.backend.check_bucket()

    @property
    def backend(self) -> Backend:
        """Where the store's bytes live and what that storage guarantees (kisstore.store.backend)."""
        if self._backend is None:
            self._backend = backend_for(self.url, self.storage_options)
        return self._backend

    def root(self) -> zarr.Group:
        with storage_errors(self.url, self.storage_options):
            try:
                return zarr.open_group(self.zstore, mode="r" if self.read_only else "r+", zarr_format=3)
            except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
                raise StoreError(f"{self.url} is not a Zarr store (no zarr.json at its root)") from e
            except (ValueError, TypeError, KeyError, RecursionError) as e:  # metadata zarr cannot parse
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise StoreError(f"{redact(self.url)}: the store's metadata is damaged ({first}); "
                                 "`kisstore info --verify` lists every problem") from None

    def validate(self) -> dict[str, Any]:
        """Check that this is a kisstore store this version can read; return root attrs."""
        if not self.exists():
            raise StoreError(f"{redact(self.url)} is not a kisstore store (no Zarr group there)")
        from kisstore.store import integrity

        meta = integrity.root_metadata(self)  # parsed and checked: damage is one line, not a crash
        attrs = dict(meta.get("attributes") or {})
        if attrs.get("created_by") != layout.CREATED_BY or "kisstore_schema_version" not in attrs:
            raise StoreError(f"{redact(self.url)} is a Zarr store not written by kisstore (no kisstore attributes)")
        version = attrs["kisstore_schema_version"]
        if not isinstance(version, int) or version > layout.SCHEMA_VERSION:
            raise StoreError(
                f"{redact(self.url)} has kisstore schema version {version!r}; this kisstore "
                f"({__version__}) reads versions up to {layout.SCHEMA_VERSION}: upgrade kisstore"
            )
        integrity.check_nodes(self, meta)  # absurd shapes or chunk counts would hang every reader
        return attrs

    def has(self, path: str) -> bool:
        with storage_errors(self.url, self.storage_options):
            return _sync(self.zstore.exists(f"{path}/zarr.json"))

    def group_attrs(self, path: str) -> dict[str, Any]:
        with storage_errors(self.url, self.storage_options):
            return dict(zarr.open_group(self.zstore, path=path, mode="r").attrs)

    # -- reading ------------------------------------------------------------------------
    def open_group(self, path: str = "", mode: str = "r") -> zarr.Group:
        """The zarr group at PATH (``mode`` as zarr's: r, r+, a, w)."""
        return zarr.open_group(self.zstore, path=path, mode=mode)

    def open_dataset(self, path: str) -> xr.Dataset:
        """The group at PATH as an xarray Dataset, lazily: Dask arrays of the stored chunks."""
        return xr.open_dataset(self.zstore, group=path, engine="zarr", chunks={}, zarr_format=3, consolidated=False)

    def open_tree(self) -> xr.DataTree:
        """The whole store as an xarray DataTree (lazily read arrays, no consolidated metadata needed)."""
        return xr.open_datatree(self.zstore, engine="zarr", zarr_format=3, consolidated=False)

    def model_ids(self, complete_only: bool = True) -> list[str]:
        if not self.has(layout.MODELS):
            return []
        with storage_errors(self.url, self.storage_options):
            g = zarr.open_group(self.zstore, path=layout.MODELS, mode="r")
            names = sorted(name for name, _ in g.groups())
        if complete_only:
            names = [n for n in names if self.group_attrs(f"{layout.MODELS}/{n}").get("complete") is True]
        return names

    # -- writing ----------------------------------------------------------------------
    def check_links(self, *paths: str, below: bool = True) -> None:
        """Refuse, with one line, a symbolic link inside a local store on the way to any of ``paths``
        (keys or group paths below the root) or, with ``below``, anywhere inside them.

        kisstore never deletes, moves or writes through a link inside a store: a linked
        ``analysis/`` or ``models/<id>`` would make a delete or an overwrite reach the link's
        target outside the store. Without ``paths``: the root's zarr.json and every folder
        kisstore writes (checked before a command starts its work). Other stores have no links."""
        if self.scheme != "file":
            return
        root = str(self.zstore.root)
        for path in paths or _KISSTORE_ENTRIES:
            link = _first_link(root, path, below)
            if link is not None:
                rel = os.path.relpath(link, root).replace(os.sep, "/")
                try:
                    target = os.readlink(link)
                except OSError:
                    target = "?"
                raise StoreError(f"store {self.url}: {rel} is a symbolic link (to {target}); kisstore does not "
                                 f"write, delete or move anything through a link inside a store: replace the "
                                 f"link with the folder or file itself")

    def init(self) -> None:
        """Create the root group with kisstore attributes, or validate an existing one."""
        if self.exists():
            self.validate()
            return
        self.check_links("zarr.json")
        with storage_errors(self.url, self.storage_options):
            # one write: a kill cannot leave a root without kisstore's attributes
            zarr.open_group(self.zstore, mode="a", zarr_format=3, attributes={
                "kisstore_schema_version": layout.SCHEMA_VERSION, "kisstore_version": __version__,
                "created_by": layout.CREATED_BY})

    def write_dataset(self, path: str, ds: xr.Dataset, *, chunks: Mapping[str, tuple[int, ...]] | None = None,
                      compute: bool = True, seal_text: bool = True):
        """Write ``ds`` as the group ``path`` (replacing it), checksummed and chunked by
        store.chunking (``chunks``: chunk shapes of named variables instead, unsharded).

        Once the chunks are stored each array is sealed (its chunk manifest recorded, see
        store.integrity). With ``compute=False`` only the metadata is written and the Dask work
        that writes the chunks is returned: ``dask.compute`` it, then call ``seal(path)``."""
        plan = chunking.for_store(ds, chunks)
        encoding = {}
        for name in ds.variables:
            encoding[name] = {"compressors": default_compressors(), **(plan[name].encoding() if name in plan else {})}
        ds = chunking.chunked_for_store(ds, chunks)  # Dask blocks that are whole shards (or chunks)
        ds = indexes.with_index_values(ds)  # small indexes open from the metadata (store.indexes)
        for var in ds.variables.values():
            var.encoding = {}
            # a manifest read along with a dataset describes the chunks it was read from, not these
            var.attrs = {k: v for k, v in var.attrs.items() if k != layout.CHUNK_MANIFEST}
        # every chunk is written, even one equal to the fill value, so `info --verify` can call a
        # missing chunk file damage (the attribute tells it this group was written that way)
        ds.attrs[layout.EVERY_CHUNK_WRITTEN] = True
        self.check_links(path)
        with storage_errors(self.url, self.storage_options):
            work = ds.to_zarr(self.zstore, group=path, mode="w", consolidated=False, zarr_format=3,
                              encoding=encoding, write_empty_chunks=True, compute=compute)
            if compute:
                self.seal(path, text=seal_text)
            return work

    def seal(self, path: str, *, text: bool = True) -> None:
        """Finish the group ``path`` once its chunks are stored: write the numeric twins of its
        text arrays (store.text; not with ``text=False``), then record each array's chunk
        manifest (store.integrity). Call it after computing the work of
        ``write_dataset(compute=False)``, before consolidating."""
        from kisstore.store import integrity
        from kisstore.store import text as text_twins

        with storage_errors(self.url, self.storage_options):
            if text:
                text_twins.write_twins(self, path)
            integrity.seal(self, path)

    def set_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        self.check_links(f"{path}/zarr.json" if path else "zarr.json")
        with storage_errors(self.url, self.storage_options):
            g = zarr.open_group(self.zstore, path=path, mode="r+")
            g.attrs.update(json.loads(json.dumps(dict(attrs), default=_jsonable)))

    def delete(self, path: str) -> None:
        self.check_links(path)
        with storage_errors(self.url, self.storage_options):
            if path:  # never the root
                _sync(self.zstore.delete_dir(path))

    def replace_group(self, src: str, dst: str) -> None:
        """Move the group ``src`` to ``dst``, replacing what was there (both paths below the root).

        Local stores rename folders (the old group is renamed aside first, so ``dst`` is
        missing only between two renames); other stores copy every key, then delete ``src``.
        """
        if not src or not dst or src == dst:
            raise ValueError("replace_group needs two different group paths below the root")
        self.check_links(src, dst, src.rstrip("/") + ".replaced")
        with storage_errors(self.url, self.storage_options):
            parent = dst.rsplit("/", 1)[0] if "/" in dst else ""
            if parent:
                zarr.open_group(self.zstore, path=parent, mode="a", zarr_format=3)  # dst's parent group
            if self.scheme == "file":
                import shutil

                root = str(self.zstore.root)
                old, new, aside = (os.path.join(root, dst), os.path.join(root, src),
                                   os.path.join(root, src.rstrip("/") + ".replaced"))
                if os.path.lexists(old):
                    os.replace(old, aside)
                os.replace(new, old)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                _sync(_move_keys(self.zstore, src, dst))

    def foreign_files(self) -> bool:
        """A local folder that is not a store but holds files: not a place to create one.

        kisstore's own lease folder does not count (a writer may be creating the store now)."""
        if self.scheme != "file" or self.exists():
            return False
        root = str(self.zstore.root)
        return os.path.isdir(root) and any(e.name != layout.LOCKS for e in os.scandir(root))

    def remove_if_unused(self) -> bool:
        """Undo a failed first run's store: if it holds no model and no checkpoint, remove the keys
        kisstore writes (``/items``, the root ``zarr.json``) and nothing else; a local folder is
        removed too once it is empty. Leases stay: this run released its own, and any other is
        another writer's. Returns whether the store was removed.

        Items alone are not worth keeping: they would fix the selection of a store that never
        got a model."""
        if not self.exists() or self.has(layout.MODELS) or self.has(layout.CHECKPOINTS):
            return False
        self.check_links(layout.ITEMS, "zarr.json")
        with storage_errors(self.url, self.storage_options):
            _sync(self.zstore.delete_dir(layout.ITEMS))
            _sync(self.zstore.delete("zarr.json"))
            if self.scheme == "file":  # (a released lease took its folder with it, under the lease's flock)
                with contextlib.suppress(OSError):  # not empty: someone else's files stay
                    os.rmdir(self.zstore.root)
        return True

    def consolidate(self) -> None:
        """Rewrite the root's consolidated metadata so readers see every group (but the scratch
        of ``/_staging``: staged groups are not part of the store until they are committed)."""
        from zarr.core.buffer import default_buffer_prototype

        self.check_links("zarr.json")
        with storage_errors(self.url, self.storage_options):
            zarr.consolidate_metadata(self.zstore)
            proto = default_buffer_prototype()
            doc = json.loads(_sync(self.zstore.get("zarr.json", prototype=proto)).to_bytes())
            listed = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
            scratch = [k for k in listed if k == layout.STAGING or k.startswith(layout.STAGING + "/")]
            if scratch:
                for k in scratch:
                    del listed[k]
                _sync(self.zstore.set("zarr.json", proto.buffer.from_bytes(json.dumps(doc).encode())))


# what kisstore writes at a store's root (see layout): checked for links before a command's work
_KISSTORE_ENTRIES = ("zarr.json", layout.ITEMS, layout.MODELS, layout.ANALYSIS, layout.ANALYSES, layout.CHECKPOINTS,
                     layout.STAGING, layout.LOCKS)


def _first_link(root: str, path: str, below: bool) -> str | None:
    """The first symbolic link on the way from ``root`` to ``root/path`` or (``below``) inside it."""
    current = root
    for part in path.split("/"):
        if not part:
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            return current
        if not os.path.lexists(current):
            return None
    if below and current != root and os.path.isdir(current):
        for dirpath, dirs, files in os.walk(current):  # does not descend into linked folders
            for name in sorted(dirs + files):
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    return full
    return None


async def _move_keys(zstore, src: str, dst: str, parallel: int = 32) -> None:
    """Copy every key below ``src`` to the same place below ``dst`` (emptied first), then delete ``src``."""
    import asyncio

    from zarr.core.buffer import default_buffer_prototype

    proto = default_buffer_prototype()
    await zstore.delete_dir(dst)
    keys = [k async for k in zstore.list_prefix(src.rstrip("/") + "/")]

    async def move(key: str) -> None:
        buf = await zstore.get(key, prototype=proto)
        if buf is not None:
            await zstore.set(dst.rstrip("/") + key[len(src.rstrip("/")):], buf)

    for i in range(0, len(keys), parallel):
        await asyncio.gather(*(move(k) for k in keys[i : i + parallel]))
    await zstore.delete_dir(src)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _sync(coro):
    from zarr.core.sync import sync

    return sync(coro)


def open_store(url: str, storage_options: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Open a kisstore store lazily (Dask-backed, one chunk per layer) as an xarray DataTree."""
    from kisstore.store import text

    store = Store(url, storage_options, read_only=True)
    store.validate()
    with storage_errors(url, storage_options):
        try:
            # analyses store their top pairs' case ids, not the /items text at them: join it back (lazily)
            # indexes from the values in the metadata (store.indexes): no coordinate chunk is read
            tree = xr.open_datatree(store.zstore, engine="zarr", chunks={}, zarr_format=3,
                                    create_default_indexes=False)
            return text.join_tree_text(indexes.indexed_tree(tree))
        except KeyError as e:
            if "dimension_names" not in str(e):
                raise
        # a checkpoint written by kisstore < 0.1.1 (arrays without dimension names): open every
        # group except the private /_checkpoints, which no analysis reads
        root = zarr.open_group(store.zstore, mode="r", zarr_format=3)
        paths = [""] + sorted(path for path, node in root.members(max_depth=None)
                              if isinstance(node, zarr.Group)
                              and path.split("/")[0] not in (layout.CHECKPOINTS, layout.STAGING))
        nodes = {"/" + path: xr.open_dataset(store.zstore, group=path or None, engine="zarr", chunks={},
                                             zarr_format=3) for path in paths}
        return text.join_tree_text(xr.DataTree.from_dict(nodes))
