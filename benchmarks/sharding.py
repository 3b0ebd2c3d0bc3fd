"""Benchmark 8: wall time of ``kisstore extract --shards K`` on a LocalCluster against one process.

Both run as the real command line in child processes, one after the other in the same run, on
the embedded SmolLM2-135M and corpus: the single process with ``--threads K``, the sharded run
on a ``LocalCluster`` of K worker processes started here, whose torch thread count is asked from
each worker (distributed's nanny sets ``OMP_NUM_THREADS=1`` in its workers, so it is 1), so both
sides use K threads in all. The balance of the shards (tokens each, from the client's own log
line) is checked against the 10 % rule of ``kisstore.extract.shards``.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from benchmarks.common import Result
from benchmarks.memory import run_child


def _worker_threads() -> int:
    import torch

    return torch.get_num_threads()


def run(*, device: str, corpus_tokens: int, n_shards: int = 2, n_items: int = 16, progress=print) -> list[Result]:
    """Extract the same store once in one process and once as ``n_shards`` shards; compare walls."""
    from distributed import Client, LocalCluster

    common = ["--model", "smollm2-135m", "--n-items", str(n_items), "--corpus", "embedded",
              "--corpus-tokens", str(corpus_tokens), "--device", device, "--quiet"]
    with tempfile.TemporaryDirectory(prefix="kisstore-bench-shards-") as tmp, \
            LocalCluster(n_workers=n_shards, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        threads = sorted(client.run(_worker_threads).values())
        one = run_child(["extract", "--store", str(Path(tmp) / "one.zarr"), "--threads", str(n_shards), *common])
        if one["rc"] != 0:
            raise RuntimeError(f"kisstore extract failed ({one['rc']}):\n{one['output'][-2000:]}")
        progress(f"  one process, --threads {n_shards}: {one['wall_s']:.0f} s")
        sharded = run_child(["extract", "--store", str(Path(tmp) / "sharded.zarr"), "--scheduler",
                             cluster.scheduler_address, "--shards", str(n_shards), *common])
        if sharded["rc"] != 0:
            raise RuntimeError(f"kisstore extract --shards failed ({sharded['rc']}):\n{sharded['output'][-2000:]}")
        progress(f"  {n_shards} shards on {n_shards} workers × {threads[0]} thread(s): {sharded['wall_s']:.0f} s")
    found = re.search(r"tokens in \d+ shards on the cluster \(([0-9, ]+) tokens\)", sharded["output"])
    sizes = [int(x.replace(",", "")) for x in re.split(r",\s+", found.group(1))] if found else []
    share = sum(sizes) / len(sizes) if sizes else float("nan")
    spread = max(abs(s - share) / share for s in sizes) if sizes else float("nan")
    details = {"one_process_s": one["wall_s"], "sharded_s": sharded["wall_s"], "n_shards": n_shards,
               "one_process_threads": n_shards, "worker_threads": threads, "shard_tokens": sizes,
               "corpus_tokens": corpus_tokens, "n_items": n_items}
    return [
        Result("shards_speedup", f"{n_shards} shards on a LocalCluster ({n_shards} workers × {threads[0]} thread) vs "
               f"one process (--threads {n_shards}): wall-time speedup", one["wall_s"] / sharded["wall_s"], None,
               details=details),
        Result("shards_balance", f"{n_shards} shards: largest deviation of a shard's tokens from n/K",
               spread * 100, 10.0, better="lower", unit="%", details=details),
    ]
