"""A real SIGKILL before every store write of extract, analyze, copy, edit and import-rome, on
local disk and on a real S3 server; after each kill the store opens in plain xarray, the same
command completes it, and its arrays equal those of an uninterrupted run (tests/kill_harness.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.s3server import s3_environment

ROOT = Path(__file__).resolve().parents[1]
# KISSTORE_KILL_ALL=1 kills every write position of every case (about 1,500 positions, most of
# an hour here). CI's default kills a fixed sample of each case: `count` positions spread evenly
# over the run (its first and last write included) and every one of its last `tail` writes (the
# commit), so that the whole suite stays within CI's time. Each result (positions killed, total
# writes, seconds) is printed to the test's output (`pytest -s` or -rA shows it).
KILL_ALL = os.environ.get("KISSTORE_KILL_ALL") == "1"
SAMPLE = {  # case: (count, tail)
    "extract": (24, 4), "extract-overwrite": (16, 4), "analyze": (16, 6), "edit": (12, 4), "edit-memit": (10, 4),
    "import-rome": (12, 4), "copy": (12, 4), "s3-extract": (8, 3), "s3-analyze": (5, 2), "s3-copy": (8, 3),
}


def _sample(case: str) -> dict:
    count, tail = SAMPLE[case]
    return {} if KILL_ALL else {"count": count, "tail": tail}


@pytest.fixture(scope="module")
def world(tiny_models, tiny_items, tiny_corpus, tmp_path_factory):
    """A store with the tiny Llama extracted and analysed, and its ROME export."""
    base = tmp_path_factory.mktemp("kill_world")
    store = base / "base.zarr"
    run_cli(*_extract(tiny_models["llama"], store, tiny_items, tiny_corpus), check=True)
    analysed = base / "analysed.zarr"
    shutil.copytree(store, analysed)
    run_cli("analyze", str(analysed), "--bootstrap", "20", check=True)  # as the analyze case below
    stats = base / "stats"
    run_cli("export", str(store), "--format", "rome", "--stats-dir", str(stats), check=True)
    rome = next(p for p in stats.rglob("*") if p.is_dir() and any(p.glob("*.npz")))
    return {"store": store, "analysed": analysed, "rome": rome, "model": tiny_models["llama"],
            "items": tiny_items, "corpus": tiny_corpus, "base": base}


def _extract(model, store, items, corpus) -> list[str]:
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--quiet"]


def _harness(spec: dict, tmp_path: Path, env: dict | None = None) -> dict:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "tests.kill_harness", str(path)], capture_output=True, text=True,
                          env=full_env, timeout=3300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(result: dict, at_least: int, every: bool = True) -> None:
    print(f"killed {result['positions']} of {result['total_writes']} write positions in {result.get('seconds')} s: "
          f"{result.get('killed')}")
    assert not result["failures"], "\n".join(result["failures"][:10])
    assert result["total_writes"] >= at_least
    if every:
        assert result["positions"] == result["total_writes"]  # every position, none skipped


def _cases(w: dict, store: str) -> dict[str, dict]:
    """Each command, the store state it starts from, and the groups its result is judged by."""
    return {
        "extract": {"argv": _extract(w["model"], store, w["items"], w["corpus"]), "baseline": None,
                    "compare": ["models/llama", "items"], "at_least": 40},
        "extract-overwrite": {"argv": [*_extract(w["model"], store, w["items"], w["corpus"]), "--overwrite"],
                              "baseline": str(w["analysed"]), "compare": ["models/llama", "items"], "at_least": 40},
        "analyze": {"argv": ["analyze", store, "--bootstrap", "20"], "baseline": str(w["analysed"]),
                    "compare": ["analysis/llama", "analysis/scaling"], "at_least": 40},
        "edit": {"argv": ["edit", store, "--model", str(w["model"]), "--layer", "1", "--edits", "2", "--tracked", "4",
                          "--tracked-from", "all", "--method", "direct", "--checkpoint-every", "1", "--run", "k",
                          "--quiet"],
                 "baseline": str(w["store"]), "compare": ["edits/k"], "ignore": ["seconds"], "at_least": 10},
        "edit-memit": {"argv": ["edit", store, "--model", str(w["model"]), "--method", "memit", "--layers", "0-1",
                                "--edits", "3", "--tracked", "4", "--tracked-from", "all", "--target", "direct",
                                "--checkpoint-every", "1", "--run", "k", "--quiet"],
                       "baseline": str(w["store"]), "compare": ["edits/k"], "ignore": ["seconds"], "at_least": 20},
        "import-rome": {"argv": ["import-rome", str(w["rome"]), "--model", str(w["model"]), "--store", store],
                        "baseline": None, "compare": ["models/llama"], "at_least": 10},
    }


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("command", ["extract", "extract-overwrite", "analyze", "edit", "edit-memit", "import-rome"])
def test_a_kill_at_every_write_of_a_local_store_is_completed_by_the_same_command(command, world, tmp_path):
    store = str(tmp_path / "s.zarr")
    case = _cases(world, store)[command]
    sample = _sample(command)
    result = _harness({"argv": case["argv"], "store": store, "baseline": case["baseline"],
                       "compare": case["compare"], "ignore": case.get("ignore", []), **sample}, tmp_path)
    _check(result, case["at_least"], every=not sample)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_a_kill_at_every_write_of_a_local_copy_is_completed_by_the_same_command(world, tmp_path):
    dst = str(tmp_path / "copy.zarr")
    sample = _sample("copy")
    result = _harness({"argv": ["copy", str(world["analysed"]), dst, "--quiet"], "store": dst, "baseline": None,
                       "compare": ["models/llama", "items", "analysis/llama"], **sample}, tmp_path)
    _check(result, 30, every=not sample)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("command", ["extract", "analyze", "copy"])
def test_a_kill_at_every_write_to_s3_is_completed_by_the_same_command(command, world, tmp_path, monkeypatch):
    """On S3 a position costs seconds against the moto server; analyze makes about 400 writes (its
    staged groups, their manifests, then the commit's copy into place and the staged keys'
    deletion). CI kills the sample of SAMPLE; KISSTORE_KILL_ALL=1: every position."""
    s3 = s3_environment(monkeypatch)
    prefix = "kill/s.zarr"
    url = s3.url(prefix)
    if command == "copy":
        argv, baseline, compare = ["copy", str(world["analysed"]), url, "--dst-option", f"endpoint_url={s3.endpoint}", "--quiet"], None, \
            ["models/llama", "items", "analysis/llama"]
    else:
        case = _cases(world, url)[command]
        argv, baseline, compare = [*case["argv"], *s3.cli], case["baseline"], case["compare"]
    sample = _sample(f"s3-{command}")
    result = _harness({"argv": argv, "store": url, "baseline": baseline, "compare": compare,
                       "storage_options": s3.options, **sample,
                       "s3": {"bucket": s3.bucket, "prefix": prefix, "endpoint": s3.endpoint}},
                      tmp_path, env={k: os.environ[k] for k in os.environ if k.startswith("AWS_")})
    _check(result, 30, every=not sample)
