"""Kill a kisstore command with SIGKILL once at every write position, and resume it each time.

Run as ``python -m tests.kill_harness SPEC.json``: the process imports kisstore and its heavy
dependencies once, then forks one child per run, so a tiny model's command costs a fraction of a
second instead of a fresh interpreter's start. A child dies by a real SIGKILL that it sends
itself just before its n-th store write (``KISSTORE_FAILPOINT=write:n``, see
kisstore/failpoints.py). For n = 1, 2, … until the command runs to its end:

1. the store is restored to its state before the command;
2. the command runs and is killed before write n;
3. the store must open in plain xarray (when it has a root), and every model that says it is
   complete must read;
4. the same command, run again, must succeed;
5. the arrays it produced must equal those of an uninterrupted run, bit for bit.

SPEC: {"argv": [...], "store": URL, "baseline": DIR or null, "storage_options": {...},
"compare": [group paths], "s3": {"bucket", "prefix", "endpoint"} or null, "max_positions": N,
"workers": W, "stride": K, "count": C, "tail": T, "ignore": [variables not compared]} (stride: every K-th position;
count: C positions spread evenly over the run, its first and last included; either with each of
the last T).
Prints one JSON line: {"positions": N, "failures": [...]} .
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.cli_server import preload


def _fork(fn, *args, failpoint: str | None = None, log: Path | None = None) -> int:
    """Run ``fn(*args)`` in a forked child; its exit code, or -9 when it was killed."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            if log is not None:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            from kisstore import failpoints

            failpoints._counts.clear()
            if failpoint:
                os.environ["KISSTORE_FAILPOINT"] = failpoint
            else:
                os.environ.pop("KISSTORE_FAILPOINT", None)
            failpoints.watch_store_writes()
            code = fn(*args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _cli(argv: list[str], count_file: str | None = None) -> int:
    from kisstore import failpoints
    from kisstore_cli.main import cli

    try:
        cli.main(args=argv, prog_name="kisstore", standalone_mode=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    if count_file:
        Path(count_file).write_text(str(failpoints._counts.get(failpoints.WRITE, 0)))
    return code


def _readable(spec: dict, out: str) -> int:
    """The store opens in plain xarray, and what says it is complete reads."""
    import xarray as xr

    if not _has_root(spec):
        Path(out).write_text("no store")
        return 0
    tree = xr.open_datatree(spec["store"], engine="zarr", storage_options=spec.get("storage_options") or None)
    for node in tree.subtree:
        if node.attrs.get("complete") is True:
            for name in node.ds.data_vars:
                node.ds[name].values  # noqa: B018 - every array of a complete group reads
    Path(out).write_text("ok")
    return 0


def _digest(spec: dict, out: str) -> int:
    import numpy as np
    import xarray as xr

    tree = xr.open_datatree(spec["store"], engine="zarr", storage_options=spec.get("storage_options") or None)
    h = {}
    for path in spec["compare"]:
        ds = tree[path].ds
        for name in sorted(ds.variables):
            if name in (spec.get("ignore") or ()):
                continue  # a wall-clock measurement, different in every run
            v = ds[name].values
            d = hashlib.sha256(str(v.dtype).encode() + str(v.shape).encode())
            numeric = v.dtype.kind in "biufcmM"  # text (StringDType, object) by value: its bytes are pointers
            d.update(np.ascontiguousarray(v).tobytes() if numeric else repr(v.tolist()).encode())
            h[f"{path}/{name}"] = d.hexdigest()
    Path(out).write_text(json.dumps(h, sort_keys=True))
    return 0


def _has_root(spec: dict) -> bool:
    s3 = spec.get("s3")
    if s3:
        return bool(_s3(spec).list_objects_v2(Bucket=s3["bucket"], Prefix=f"{s3['prefix']}/zarr.json").get("KeyCount"))
    return (Path(spec["store"]) / "zarr.json").exists()


def _s3(spec: dict):
    import boto3

    s3 = spec["s3"]
    return boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1")  # credentials: the environment


def _restore(spec: dict) -> None:
    base = spec.get("baseline")
    s3 = spec.get("s3")
    if s3:
        client = _s3(spec)
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=s3["prefix"] + "/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=s3["bucket"], Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        if base:
            for p in sorted(Path(base).rglob("*")):
                if p.is_file():
                    client.put_object(Bucket=s3["bucket"], Key=f"{s3['prefix']}/{p.relative_to(base).as_posix()}",
                                      Body=p.read_bytes())
        return
    store = Path(spec["store"])
    if store.exists():
        shutil.rmtree(store)
    if base:
        shutil.copytree(base, store, symlinks=True)
    for extra in spec.get("also_clear") or []:
        if Path(extra).exists():
            shutil.rmtree(extra)


def _for_worker(spec: dict, w: int) -> dict:
    """The spec with the store at a place of worker ``w``'s own (several run side by side)."""
    spec = json.loads(json.dumps(spec))
    old, new = spec["store"], f"{spec['store']}-w{w}"
    spec["argv"] = [a.replace(old, new) if a == old else a for a in spec["argv"]]
    spec["store"] = new
    if spec.get("s3"):
        spec["s3"]["prefix"] = f"{spec['s3']['prefix']}-w{w}"
    return spec


def _positions(spec: dict, positions: list[int], reference: dict, work: Path, out: str) -> int:
    """Kill, check, rerun and compare at each of ``positions``; failures into ``out`` (JSON)."""
    failures: list[str] = []
    argv = spec["argv"]

    def read(p: Path) -> str:
        return p.read_text() if p.exists() else ""

    for n in positions:
        _restore(spec)
        code = _fork(_cli, argv, log=work / "killed.log", failpoint=f"write:{n}")
        if code != -9:
            failures.append(f"write {n}: the killed run ended with {code} instead of SIGKILL: "
                            f"{read(work / 'killed.log')[-300:]}")
            continue
        if _fork(_readable, spec, str(work / "readable"), log=work / "readable.log") != 0:
            failures.append(f"write {n}: the store does not open after the kill: {read(work / 'readable.log')[-400:]}")
        code = _fork(_cli, argv, log=work / "resume.log")
        if code != 0:
            failures.append(f"write {n}: the rerun failed ({code}): {read(work / 'resume.log')[-400:]}")
            continue
        _fork(_digest, spec, str(work / "got.json"), log=work / "digest.log")
        got = json.loads(read(work / "got.json") or "{}")
        if got != reference:
            differ = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
            failures.append(f"write {n}: the rerun's arrays differ from an uninterrupted run's: {differ[:6]}")
    _restore(spec)
    Path(out).write_text(json.dumps(failures))
    return 0


def main(spec_path: str) -> None:
    started = time.monotonic()
    spec = json.loads(Path(spec_path).read_text())
    preload()
    work = Path(tempfile.mkdtemp(prefix="kill-"))

    # the uninterrupted run: its write count and its arrays
    _restore(spec)
    count = work / "count"
    code = _fork(_cli, spec["argv"], str(count), log=work / "ref.log", failpoint="write:1000000000")
    if code != 0:
        text = (work / "ref.log").read_text() if (work / "ref.log").exists() else ""
        print(json.dumps({"positions": 0, "total_writes": 0, "failures": [f"uninterrupted run failed ({code}): {text}"]}))
        return
    total = int(count.read_text())
    _fork(_digest, spec, str(work / "ref.json"))
    reference = json.loads((work / "ref.json").read_text())
    _restore({**spec, "baseline": None})
    positions = list(range(1, min(total, spec.get("max_positions") or total) + 1))
    tail = spec.get("tail", 0)
    if spec.get("stride"):  # every stride-th position, and every one of the last `tail` (a commit's)
        positions = [n for n in positions if n % spec["stride"] == 1 or n > total - tail]
    elif spec.get("count") and spec["count"] < len(positions):  # `count` spread evenly, first and last included
        k = spec["count"]
        spread = {round(1 + i * (len(positions) - 1) / (k - 1)) for i in range(k)} if k > 1 else {1}
        positions = sorted(n for n in positions if n in spread or n > total - tail)
    workers = max(1, int(spec.get("workers") or os.cpu_count() or 1))
    pids = []
    for w in range(workers):  # side by side, each with its own store and its own share of positions
        wdir = work / f"w{w}"
        wdir.mkdir()
        pid = os.fork()
        if pid == 0:
            try:
                _positions(_for_worker(spec, w), positions[w::workers], reference, wdir, str(wdir / "failures.json"))
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    failures = []
    for w in range(workers):
        f = work / f"w{w}" / "failures.json"
        failures += json.loads(f.read_text()) if f.exists() else [f"worker {w} died"]
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"positions": len(positions), "total_writes": total, "failures": failures,
                      "killed": positions, "seconds": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main(sys.argv[1])
