"""Integrity checks a reader can afford: sane metadata, metadata that agrees with its consolidated
copy, every chunk present and in its place (the chunk manifest).

Every array ``Store.write_dataset`` writes is *sealed* once its chunks are stored: the array's
attribute ``kisstore_chunk_manifest`` records, for each chunk key, the crc32c checksum its
crc32c codec stored as the chunk's last 4 bytes. The codec proves a chunk's bytes intact; the
manifest proves they are the bytes written *at that position* (a swapped, duplicated or
replaced chunk file carries another checksum). Sealing reads 4 bytes per chunk; checking reads
the same 4 bytes (one small request per chunk, which also proves the chunk file exists).

A sharded array (store.chunking) stores many chunks in one object, the shard, ending in an index
of where each chunk lies and that index's crc32c. Its manifest entry for a shard is
``<index crc32c>:<crc32 of the chunks' crc32c trailers>``: the index checksum alone would not
tell apart two shards whose chunks compressed to the same sizes. Sealing and checking a shard
read its index, then the 4-byte trailer of each chunk in it.
Stores written by kisstore 0.1 have no manifest: they are read and verified without the
position check.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from kisstore.errors import StoreError
from kisstore.store import layout
from kisstore.store.urls import redact

if TYPE_CHECKING:
    from kisstore.store.io import Store

MANIFEST = layout.CHUNK_MANIFEST
MAX_CHUNKS = 10**6  # chunks of one array (a 10⁶-wide d_ff at 4096 per chunk has 60 000 per layer)
MAX_CHUNK_ELEMENTS = 2**31  # elements of one chunk (8 GiB of float32)
MAX_D_FF = 10**6
MAX_DEPTH = 32  # nesting of attributes (kisstore's own are at most 4 deep)
MAX_METADATA_BYTES = 64 * 2**20  # one zarr.json (the root's holds every node's metadata)
# the data types kisstore and xarray write (no complex: kisstore never writes one, and readers crash on
# a complex covariance); a parametrised type is {"name": …, "configuration": …}
DATA_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
              "float16", "float32", "float64", "string", "fixed_length_utf32", "variable_length_bytes",
              "null_terminated_bytes", "raw_bytes", "bytes", "numpy.datetime64", "numpy.timedelta64"}
UNCOMPARED = (layout.STAGING, layout.CHECKPOINTS)  # rewritten between consolidations by design
_PARALLEL = 64


def _sync(coro):
    from zarr.core.sync import sync

    return sync(coro)


# -- parsing ------------------------------------------------------------------------------------
def parse_json(raw: bytes | None, what: str) -> dict[str, Any]:
    """A zarr.json's bytes → dict; a StoreError naming ``what`` when it is not a JSON object."""
    if raw is None:
        raise StoreError(f"{what}: its zarr.json is missing")
    if len(raw) > MAX_METADATA_BYTES:
        raise StoreError(f"{what}: its zarr.json is {len(raw)} bytes, more than metadata ever needs")
    try:
        meta = json.loads(bytes(raw).decode("utf-8"))
    except RecursionError:
        raise StoreError(f"{what}: its zarr.json is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{what}: its zarr.json is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{what}: its zarr.json is not a JSON object")
    return meta


async def _get(zstore, key: str, suffix: int | None = None):
    from zarr.abc.store import SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype

    buf = await zstore.get(key, prototype=default_buffer_prototype(),
                           byte_range=None if suffix is None else SuffixByteRequest(suffix))
    return None if buf is None else buf.to_bytes()


async def _get_many(zstore, keys: list[str], suffix: int | None = None) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(0, len(keys), _PARALLEL):
        out.extend(await asyncio.gather(*(_get(zstore, k, suffix) for k in keys[i : i + _PARALLEL])))
    return out


def root_metadata(store: Store) -> dict[str, Any]:
    """The root's zarr.json, parsed and checked (its attributes and every consolidated node's metadata)."""
    from kisstore.store.io import storage_errors

    with storage_errors(store.url, store.storage_options):
        raw = _sync(_get(store.zstore, "zarr.json"))
    meta = parse_json(raw, f"{redact(store.url)}: the store's root")
    problem = node_problem(meta, group=True)
    if problem:
        raise StoreError(f"{redact(store.url)}: the root's zarr.json is damaged ({problem})")
    return meta


def consolidated(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The consolidated metadata of the root's zarr.json: {node path: metadata}."""
    cm = meta.get("consolidated_metadata")
    if not isinstance(cm, dict):
        return {}
    nodes = cm.get("metadata")
    return nodes if isinstance(nodes, dict) else {}


def check_nodes(store: Store, meta: dict[str, Any]) -> None:
    """Refuse consolidated metadata whose declared shapes, dtypes, chunk grids or attributes no
    kisstore store has (a crafted or damaged store would hang or crash readers)."""
    nodes = consolidated(meta)
    for path, node in nodes.items():
        problem = _path_problem(path) or node_problem(node)
        if problem:
            raise StoreError(f"{redact(store.url)}: /{path} metadata: {problem}; "
                             "the store is damaged (`kisstore info --verify` lists every problem)")
    problem = layout_problem(nodes)
    if problem:
        raise StoreError(f"{redact(store.url)}: {problem}; the store is damaged or was not written by kisstore")


def _path_problem(path: Any) -> str | None:
    if not isinstance(path, str) or not path or any(p in ("", ".", "..") for p in path.split("/")):
        return f"node path {path!r} is not a plain path below the root"
    return None


def _depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _is_count(x: Any, low: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= low


def node_problem(node: Any, group: bool | None = None) -> str | None:
    """What is wrong with one node's metadata (None when it is one kisstore can read)."""
    if not isinstance(node, dict):
        return "not a JSON object"
    if node.get("zarr_format") != 3:
        return f"zarr_format {node.get('zarr_format')!r}, expected 3"
    kind = node.get("node_type")
    if kind not in ("group", "array") or (group is True and kind != "group"):
        return f"node_type {kind!r}"
    attrs = node.get("attributes", {})
    if not isinstance(attrs, dict):
        return "attributes are not a JSON object"
    if _depth(attrs) > MAX_DEPTH:
        return f"attributes nested more than {MAX_DEPTH} levels deep"
    if kind == "group":
        return None
    shape = node.get("shape")
    if not isinstance(shape, list) or not all(_is_count(n, 0) for n in shape):
        return f"shape {shape!r} is not a list of sizes ≥ 0"
    dtype = node.get("data_type")
    name = dtype.get("name") if isinstance(dtype, dict) else dtype
    if not isinstance(name, str) or name not in DATA_TYPES:
        return f"data type {dtype!r} is not one kisstore writes ({', '.join(sorted(DATA_TYPES))})"
    grid = node.get("chunk_grid")
    chunks = grid.get("configuration", {}).get("chunk_shape") if isinstance(grid, dict) else None
    if (not isinstance(grid, dict) or grid.get("name") != "regular" or not isinstance(chunks, list)
            or len(chunks) != len(shape) or not all(_is_count(c, 1) for c in chunks)):
        return f"chunk grid {grid!r} is not a regular grid of sizes ≥ 1 matching shape {shape}"
    enc = node.get("chunk_key_encoding")
    sep = enc.get("configuration", {}).get("separator", "/") if isinstance(enc, dict) else None
    if not isinstance(enc, dict) or enc.get("name") not in ("default", "v2") or sep not in ("/", "."):
        return f"chunk key encoding {enc!r} (the separator must be '/' or '.')"
    n_chunks = math.prod(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    if n_chunks > MAX_CHUNKS:
        return f"{n_chunks} chunks (shape {shape}, chunks {chunks}); no kisstore array has more than {MAX_CHUNKS}"
    if math.prod(chunks) > MAX_CHUNK_ELEMENTS:
        return f"chunks of {math.prod(chunks)} elements (chunks {chunks}); more than {MAX_CHUNK_ELEMENTS}"
    names = node.get("dimension_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(shape)):
        return f"dimension names {names!r} do not match shape {shape}"
    if not isinstance(node.get("codecs"), list):
        return "no codec list"
    return None


def layout_problem(nodes: dict[str, dict[str, Any]]) -> str | None:
    """Sizes that contradict their siblings in a model group (keys' d_ff ≠ cov's, …), by dimension name."""
    by_group: dict[str, dict[str, set[int]]] = {}
    for path, node in nodes.items():
        parts = path.split("/") if isinstance(path, str) else []
        if len(parts) != 3 or parts[0] != layout.MODELS or not isinstance(node, dict):
            continue
        names, shape = node.get("dimension_names"), node.get("shape")
        if node.get("node_type") != "array" or not isinstance(names, list) or not isinstance(shape, list):
            continue
        sizes = by_group.setdefault(f"{parts[0]}/{parts[1]}", {})
        for name, n in zip(names, shape, strict=False):
            sizes.setdefault(str(name), set()).add(n)
    for g, sizes in sorted(by_group.items()):
        widths = sizes.get("d_ff", set()) | sizes.get("d_ff_", set())
        if widths and max(widths) > MAX_D_FF:
            return f"/{g}: d_ff {max(widths)} exceeds {MAX_D_FF}"
        for name, found in sorted(sizes.items()):
            if len(found) > 1:
                return f"/{g}: its arrays disagree on {name} ({', '.join(map(str, sorted(found)))})"
    return None


# -- own metadata against the consolidated copy -------------------------------------------------
def _comparable(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "consolidated_metadata"}


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return k
    return "?"


def metadata_problems(store: Store, meta: dict[str, Any], groups: Iterable[str] | None = None
                      ) -> tuple[list[str], set[str]]:
    """Read each consolidated node's own zarr.json (those under ``groups`` only, when given) and
    compare it with its consolidated copy. Returns (problems, paths of the bad nodes)."""
    nodes = consolidated(meta)
    wanted = None if groups is None else [g.strip("/") for g in groups]
    paths = sorted(p for p in nodes if isinstance(p, str) and p.split("/")[0] not in UNCOMPARED
                   and (wanted is None or any(p == g or p.startswith(g + "/") for g in wanted)))
    raws = _sync(_get_many(store.zstore, [f"{p}/zarr.json" for p in paths]))
    problems, bad = [], set()
    for path, raw in zip(paths, raws, strict=True):
        try:
            own = parse_json(raw, f"/{path} metadata")
        except StoreError as e:
            problems.append(str(e))
            bad.add(path)
            continue
        problem = node_problem(own)
        if problem is None and _comparable(own) != _comparable(nodes[path]):
            problem = (f"its zarr.json differs from the consolidated copy in the root's zarr.json "
                       f"(field {_first_difference(_comparable(own), _comparable(nodes[path]))!r})")
        if problem:
            problems.append(f"/{path} metadata: {problem}")
            bad.add(path)
    return problems, bad


# -- chunks -------------------------------------------------------------------------------------
def chunk_keys(node: dict[str, Any]) -> Iterator[tuple[tuple[int, ...], str]]:
    """(chunk index, chunk key relative to the array) of every chunk an array's grid declares."""
    import itertools

    shape = node["shape"]
    chunks = node["chunk_grid"]["configuration"]["chunk_shape"]
    enc = node["chunk_key_encoding"]
    sep = enc.get("configuration", {}).get("separator", "/" if enc["name"] == "default" else ".")
    for idx in itertools.product(*(range(-(-n // c)) for n, c in zip(shape, chunks, strict=True))):
        if enc["name"] == "default":
            yield idx, sep.join(["c", *map(str, idx)])
        else:
            yield idx, sep.join(map(str, idx)) if idx else "0"


def _is_crc32c(codecs: Any) -> bool:
    last = codecs[-1] if isinstance(codecs, list | tuple) and codecs else None
    return last == "crc32c" or (isinstance(last, dict) and last.get("name") == "crc32c")


def sharding(node: dict[str, Any]) -> dict[str, Any] | None:
    """The configuration of the array's ``sharding_indexed`` codec, when it is sharded the way
    kisstore shards (the only codec, inner chunks and index each ending in crc32c); else None."""
    codecs = node.get("codecs") or []
    if len(codecs) != 1 or not isinstance(codecs[0], dict) or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0].get("configuration") or {}
    inner = conf.get("chunk_shape")
    shard = (node.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
    if (not isinstance(inner, list | tuple) or not isinstance(shard, list | tuple) or len(inner) != len(shard)
            or not all(_is_count(c, 1) for c in inner) or any(s % c for s, c in zip(shard, inner, strict=True))
            or not _is_crc32c(conf.get("codecs")) or not _is_crc32c(conf.get("index_codecs"))
            or conf.get("index_location", "end") not in ("start", "end")):
        return None
    return conf


def has_crc32c(node: dict[str, Any]) -> bool:
    """Whether every stored object of the array ends in a crc32c checksum of what precedes it
    (a plain chunk; a shard, whose last 4 bytes check its index)."""
    return _is_crc32c(node.get("codecs")) or sharding(node) is not None


def _index_size(node: dict[str, Any], conf: dict[str, Any]) -> int:
    shard = node["chunk_grid"]["configuration"]["chunk_shape"]
    return 16 * math.prod(s // c for s, c in zip(shard, conf["chunk_shape"], strict=True)) + 4


def _spans(index: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each stored chunk of a shard from its index (empty slots left out)."""
    import struct

    body = index[:-4]
    pairs = struct.unpack(f"<{len(body) // 8}Q", body)
    empty = 2**64 - 1
    return [(o, n) for o, n in zip(pairs[::2], pairs[1::2], strict=True) if not (o == empty and n == empty)]


def _shard_digest(index: bytes, tails: list[bytes]) -> str:
    import zlib

    return f"{index[-4:].hex()}:{zlib.crc32(b''.join(tails)):08x}"


def digest_of(raw: bytes, node: dict[str, Any]) -> str:
    """The manifest entry of a stored object from its bytes (see the module docstring)."""
    conf = sharding(node)
    if conf is None:
        return raw[-4:].hex()
    size = _index_size(node, conf)
    index = raw[-size:] if conf.get("index_location", "end") == "end" else raw[:size]
    if len(raw) < size:
        return "truncated"
    return _shard_digest(index, [raw[o + n - 4 : o + n] for o, n in _spans(index)])


def shard_problem(raw: bytes, node: dict[str, Any]) -> str | None:
    """What fails the checksums in a shard's bytes (its index, then each chunk); None when intact."""
    import google_crc32c

    conf = sharding(node)
    if conf is None:
        return None
    size = _index_size(node, conf)
    if len(raw) < size:
        return "shorter than its index"
    index = raw[-size:] if conf.get("index_location", "end") == "end" else raw[:size]
    if google_crc32c.value(index[:-4]).to_bytes(4, "little") != index[-4:]:
        return "its index fails its crc32c check"
    for o, n in _spans(index):
        piece = raw[o : o + n]
        if n < 4 or len(piece) != n or google_crc32c.value(piece[:-4]).to_bytes(4, "little") != piece[-4:]:
            return f"the chunk at bytes {o}–{o + n} fails its crc32c check"
    return None


async def _digest(zstore, key: str, node: dict[str, Any]) -> str | None:
    """The manifest entry of one stored object, read remotely: its last 4 bytes, or for a
    shard its index and each chunk's 4-byte trailer. None when the object is missing."""
    from zarr.abc.store import RangeByteRequest
    from zarr.core.buffer import default_buffer_prototype

    conf = sharding(node)
    if conf is None:
        tail = await _get(zstore, key, 4)
        return None if tail is None else tail.hex()
    size = _index_size(node, conf)
    proto = default_buffer_prototype()
    if conf.get("index_location", "end") == "end":
        index = await _get(zstore, key, size)
    else:
        buf = await zstore.get(key, prototype=proto, byte_range=RangeByteRequest(0, size))
        index = None if buf is None else buf.to_bytes()
    if index is None:
        return None
    if len(index) < size:
        return "truncated"

    async def tail(o: int, n: int) -> bytes:
        buf = await zstore.get(key, prototype=proto, byte_range=RangeByteRequest(o + n - 4, o + n))
        return b"" if buf is None else buf.to_bytes()

    spans = _spans(index)
    tails: list[bytes] = []
    for i in range(0, len(spans), _PARALLEL):
        tails.extend(await asyncio.gather(*(tail(o, n) for o, n in spans[i : i + _PARALLEL])))
    return _shard_digest(index, tails)


async def _digests(zstore, keys: list[str], node: dict[str, Any]) -> list[str | None]:
    out: list[str | None] = []
    step = _PARALLEL if sharding(node) is None else 4  # a shard's digest makes its own parallel reads
    for i in range(0, len(keys), step):
        out.extend(await asyncio.gather(*(_digest(zstore, k, node) for k in keys[i : i + step])))
    return out


def _described(node: dict[str, Any]) -> dict[str, Any]:
    """What a manifest records of the array it was sealed for."""
    return {"shape": node.get("shape"), "data_type": node.get("data_type"),
            "chunk_shape": (node.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")}


def manifest_of(node: dict[str, Any]) -> dict[str, str] | None:
    """The array's chunk manifest {chunk key: crc32c hex}, or None when it has none.

    A manifest sealed for another shape, data type or chunking (an array another tool rewrote,
    copying the attributes it read) does not describe these chunks and is ignored."""
    m = (node.get("attributes") or {}).get(MANIFEST)
    if (isinstance(m, dict) and m.get("hash") == "crc32c" and isinstance(m.get("chunks"), dict)
            and all(m.get(k) == v for k, v in _described(node).items())):
        return m["chunks"]
    return None


def seal(store: Store, path: str) -> None:
    """Record the chunk manifest of every array in the group ``path``, from the stored bytes.

    Call it once the group's chunks are all written (``Store.write_dataset`` does, unless
    ``compute=False``: then after computing its work) and before consolidating."""
    import zarr

    group = zarr.open_group(store.zstore, path=path, mode="r+", zarr_format=3, use_consolidated=False)
    for _name, arr in group.arrays():
        node = arr.metadata.to_dict()
        if not has_crc32c(node):
            continue
        keys = [k for _, k in chunk_keys(node)]
        digests = _sync(_digests(store.zstore, [f"{arr.path}/{k}" for k in keys], node))
        if any(t is None for t in digests):
            continue  # not written whole: nothing to seal
        chunks = dict(zip(keys, digests, strict=True))
        arr.attrs.update({MANIFEST: {"hash": "crc32c", **_described(node), "chunks": chunks}})


def chunk_problems(store: Store, path: str, node: dict[str, Any], every_chunk_written: bool) -> list[str]:
    """Check every chunk of the array at ``path`` is present (when its group was written whole)
    and carries the checksum its manifest records; reads 4 bytes per chunk (a shard: its index
    and 4 bytes per chunk in it)."""
    manifest = manifest_of(node) if has_crc32c(node) else None
    if not every_chunk_written and manifest is None:
        return []
    pairs = list(chunk_keys(node))
    if manifest is None:  # presence only
        found = _sync(_get_many(store.zstore, [f"{path}/{k}" for _, k in pairs], suffix=4))
        digests = [None if f is None else "" for f in found]
    else:
        digests = _sync(_digests(store.zstore, [f"{path}/{k}" for _, k in pairs], node))
    out = []
    for (idx, key), digest in zip(pairs, digests, strict=True):
        if digest is None:
            if every_chunk_written:
                out.append(f"/{path} chunk {idx}: missing (its file is gone)")
        elif manifest is not None and manifest.get(key) != digest:
            out.append(f"/{path} chunk {idx}: does not match its manifest (swapped or replaced)")
    return out


def check_for_reading(store: Store, groups: Iterable[str]) -> None:
    """Before reading ``groups``: their metadata agrees with the consolidated copy readers use,
    and every chunk of their arrays is present and in its place. Raises a one-line StoreError."""
    from kisstore.store.io import storage_errors

    groups = [g.strip("/") for g in groups]
    hint = f"`kisstore info --verify {redact(store.url)}` lists every damaged node and chunk"
    with storage_errors(store.url, store.storage_options):
        meta = root_metadata(store)
        problems, _ = metadata_problems(store, meta, groups)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise StoreError(f"damaged store: {problems[0]}{more}; {hint}")
        nodes = consolidated(meta)
        for g in groups:
            complete = (nodes.get(g) or {}).get("attributes", {}).get(layout.EVERY_CHUNK_WRITTEN) is True
            for path in sorted(p for p, n in nodes.items() if p.rsplit("/", 1)[0] == g
                               and isinstance(n, dict) and n.get("node_type") == "array"):
                problems = chunk_problems(store, path, nodes[path], complete)
                if problems:
                    more = f" (and {len(problems) - 1} more chunk(s))" if len(problems) > 1 else ""
                    raise StoreError(f"damaged store: {problems[0]}{more}; {hint}")
