"""More bad input (issue #18): one line naming the problem, exit code 2, no traceback, the store untouched."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kisstore_cli.main import cli
from tests.conftest import copy_store, small_tmpfs, tree_digest


@pytest.fixture(scope="module")
def good_store(tiny_store):
    """A store with gpt2 complete (not analysed); each test works on a copy."""
    return tiny_store("gpt2")


@pytest.fixture
def store(good_store, tmp_path) -> Path:
    return copy_store(good_store, tmp_path / "copy")


def _refused(res, needle: str) -> str:
    """Exit 2 and one short line naming the problem."""
    out = (res.output if hasattr(res, "output") else res.stdout + res.stderr).strip()
    assert res.exit_code == 2 if hasattr(res, "exit_code") else res.returncode == 2, out
    error = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, out
    assert needle in error[0], out
    assert "Traceback" not in out, out
    assert len(error[0]) <= 300, error[0]
    return error[0]


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def _extract(model, store, items, corpus, *extra):
    return _invoke(["extract", "--model", str(model), "--store", str(store), "--items", str(items),
                    "--corpus", str(corpus), "--quiet", *extra])


# -- items --------------------------------------------------------------------------------
def _record(case_id=1, **rw):
    base = {"prompt": "The capital of {} is", "subject": "France", "relation_id": "P36",
            "target_true": {"str": "Paris"}, "target_new": {"str": "Rome"}}
    base.update(rw)
    return {"case_id": case_id, "requested_rewrite": base}


def _deep(n: int) -> str:
    return "[" * n + "]" * n


ITEMS = {
    "case id over int64": (json.dumps([_record(case_id=2**70)]), "case_id"),
    "case id a bool": (json.dumps([_record(case_id=True)]), "case_id"),
    "case id a float": (json.dumps([_record(case_id=1.5)]), "case_id"),
    "negative case id": (json.dumps([_record(case_id=-3)]), "case_id"),
    "lone surrogate subject": ('[{"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", '
                               '"subject": "\\ud800", "relation_id": "P36", "target_true": {"str": "Paris"}, '
                               '"target_new": {"str": "Rome"}}}]', "UTF-8"),
    "lone surrogate target": ('[{"case_id": 1, "requested_rewrite": {"prompt": "The capital of {} is", '
                              '"subject": "France", "relation_id": "P36", "target_true": {"str": "Par\\udfffis"}, '
                              '"target_new": {"str": "Rome"}}}]', "UTF-8"),
    "200k-deep JSON": (_deep(200_000), "nested too deeply"),
    "case-id-keyed dict": (json.dumps({str(i): _record(case_id=i) for i in range(200)}), "top level"),
    "huge non-list": (json.dumps("x" * 100_000), "top level"),
    "huge bad field": (json.dumps([_record(relation_id=["y" * 100_000])]), "relation_id"),
    "jsonl with a bad line": (json.dumps(_record(1)) + "\n{oops\n", "line 2"),
    "jsonl with a non-object line": (json.dumps(_record(1)) + "\n[1, 2]\n", "line 2"),
}


@pytest.mark.parametrize("case", ITEMS)
def test_bad_items_are_refused_in_one_line(case, store, tiny_models, tiny_corpus, tmp_path):
    content, needle = ITEMS[case]
    items = tmp_path / ("items.jsonl" if case.startswith("jsonl") else "items.json")
    items.write_text(content, encoding="utf-8", errors="surrogatepass")
    before = tree_digest(store)
    line = _refused(_extract(tiny_models["llama"], store, items, tiny_corpus), needle)
    assert "x" * 201 not in line and "y" * 201 not in line  # input is not echoed at length
    assert tree_digest(store) == before


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_jsonl_items_are_accepted(suffix, tiny_models, tiny_items, tiny_corpus, tmp_path):
    records = json.loads(Path(tiny_items).read_text())
    items = tmp_path / f"items{suffix}"
    items.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = _extract(tiny_models["llama"], tmp_path / "s.zarr", items, tiny_corpus, "--layers", "0")
    assert res.exit_code == 0, res.output
    import xarray as xr

    ds = xr.open_datatree(tmp_path / "s.zarr", engine="zarr")["items"].ds
    assert [int(x) for x in ds["item"].values] == [r["case_id"] for r in records]


# -- corpus -------------------------------------------------------------------------------
CORPORA = {
    "bad UTF-8 in .txt": ("c.txt", b"The capital of France is Paris.\n\nBad \xff\xfe bytes here.\n" * 20,
                          "not valid UTF-8"),
    "binary .txt": ("c.txt", bytes(range(256)) * 40, "not valid UTF-8"),
    "NUL bytes in .txt": ("c.txt", b"Some text.\x00\x00\x00 more text. " * 50, "NUL"),
    "bad UTF-8 in .jsonl": ("c.jsonl", b'{"text": "fine text here"}\n{"text": "bad \xff"}\n', "not valid UTF-8"),
    "bad JSON line": ("c.jsonl", b'{"text": "The capital of France is Paris."}\n{"text": oops}\n', "line 2"),
    "non-string text": ("c.jsonl", b'{"text": "The capital of France is Paris."}\n{"text": 5}\n', "'text'"),
    "too few tokens": ("c.txt", b"Hi.\n", "tokens"),
    "garbage parquet": ("c.parquet", b"PAR1 this is not parquet at all", "parquet"),
}


@pytest.mark.parametrize("case", CORPORA)
def test_bad_corpus_is_refused_before_any_work(case, store, tiny_models, tiny_items, tmp_path):
    name, content, needle = CORPORA[case]
    corpus = tmp_path / name
    corpus.write_bytes(content)
    before = tree_digest(store)
    # --overwrite of a complete model: today's old result must survive a corpus found bad
    _refused(_extract(tiny_models["gpt2"], store, tiny_items, corpus, "--overwrite"), needle)
    assert tree_digest(store) == before
    fresh = tmp_path / "fresh.zarr"
    _refused(_extract(tiny_models["gpt2"], fresh, tiny_items, corpus), needle)
    assert not fresh.exists()


def test_dataset_whose_text_is_not_strings_is_refused_before_any_work(store, tiny_models, tiny_items, tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": list(range(50))}).save_to_disk(str(tmp_path / "numbers"))
    before = tree_digest(store)
    _refused(_extract(tiny_models["gpt2"], store, tiny_items, f"hf:{tmp_path / 'numbers'}", "--overwrite"),
             "not strings")
    assert tree_digest(store) == before


def test_bad_corpus_in_a_glob_names_the_file(store, tiny_models, tiny_items, tmp_path):
    (tmp_path / "a.txt").write_text("The capital of France is Paris.\n" * 30)
    (tmp_path / "b.txt").write_bytes(b"ok\n\xc3\x28\n")
    before = tree_digest(store)
    line = _refused(_extract(tiny_models["gpt2"], store, tiny_items, tmp_path / "*.txt", "--overwrite"),
                    "not valid UTF-8")
    assert "b.txt" in line
    assert tree_digest(store) == before


# -- options ------------------------------------------------------------------------------
OPTIONS = {
    "extract --threads 100000": (["extract", "--threads", "100000"], "--threads"),
    "extract --threads 10**12": (["extract", "--threads", str(10**12)], "--threads"),
    "edit --threads 100000": (["edit", "--threads", "100000"], "--threads"),
    "analyze --ridge inf": (["analyze", "--ridge", "inf"], "--ridge"),
    "analyze --ridge nan": (["analyze", "--ridge", "nan"], "--ridge"),
    "analyze --ridge -1": (["analyze", "--ridge", "-1"], "--ridge"),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_bad_option_is_refused_before_any_work(case, store, tiny_models, tiny_items, tiny_corpus):
    args, needle = OPTIONS[case]
    command, rest = args[0], args[1:]
    if command == "extract":
        full = ["extract", "--model", str(tiny_models["gpt2"]), "--store", str(store), "--items", str(tiny_items),
                "--corpus", str(tiny_corpus), "--overwrite", "--quiet", *rest]
    elif command == "edit":
        full = ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1", "--edits", "1",
                "--overwrite", "--quiet", *rest]
    else:
        full = ["analyze", str(store), *rest]
    before = tree_digest(store)
    _refused(_invoke(full), needle)
    assert tree_digest(store) == before


# -- model files --------------------------------------------------------------------------
def _gguf_cases(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.gguf"
    # a real GGUF header (magic, version 3, tensor count, metadata count) cut off in the metadata
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (10).to_bytes(8, "little")
                          + (5).to_bytes(8, "little") + b"\x07\x00")
    return {"garbage": garbage, "empty": empty, "truncated": truncated}


@pytest.mark.parametrize("case", ["garbage", "empty", "truncated"])
def test_bad_gguf_is_refused_in_one_line(case, store, tiny_items, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KISSTORE_CACHE", str(tmp_path / "cache"))
    model = _gguf_cases(tmp_path)[case]
    before = tree_digest(store)
    _refused(_extract(model, store, tiny_items, tiny_corpus), model.name)
    assert tree_digest(store) == before


# -- import-rome --------------------------------------------------------------------------
def _npy_bytes(shape, descr="<f8", data: bytes = b"") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


ROME = {
    "huge square header": ((10**7, 10**7), "<f8"),
    "huge 2-GB-ish header": ((40_000, 40_000), "<f4"),
    "overflowing header": ((2**40, 2**40), "<f8"),
}


@pytest.mark.parametrize("case", ROME)
def test_npz_with_a_huge_header_is_refused_before_allocating(case, store, tiny_models, tmp_path):
    shape, descr = ROME[case]
    src = tmp_path / "wikipedia_stats"
    src.mkdir()
    d = 48  # tiny gpt2's d_ff
    for i in range(3):
        path = src / f"transformer.h.{i}.mlp.c_proj_float32_mom2_100.npz"
        with zipfile.ZipFile(path, "w") as z:
            if i == 1:
                z.writestr("mom2.mom2.npy", _npy_bytes(shape, descr, b"\0" * 64))
            else:
                z.writestr("mom2.mom2.npy", _npy_bytes((d, d), "<f4", np.eye(d, dtype="<f4").tobytes()))
            z.writestr("mom2.count.npy", _npy_bytes((), "<i8", np.int64(100).tobytes()))
    before = tree_digest(store)
    for target in (store, tmp_path / "new.zarr"):
        args = ["import-rome", str(src), "--model", str(tiny_models["gpt2"]), "--store", str(target)]
        if target == store:
            args.append("--overwrite")
        _refused(_invoke(args), "transformer.h.1.mlp.c_proj")
    assert tree_digest(store) == before
    assert not (tmp_path / "new.zarr").exists()


# -- full disk ----------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    yield from small_tmpfs(tmp_path, "4m")


@pytest.mark.parametrize("slack_kib", [16, 120, 200])
def test_analyze_on_a_full_disk_is_one_line(slack_kib, small_fs, good_store):
    store = small_fs / "s.zarr"
    shutil.copytree(good_store, store)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_fs).free - slack_kib * 1024))
    before = tree_digest(store)
    _refused(_invoke(["analyze", str(store)]), "No space left on device")
    filler.unlink()
    assert tree_digest(store) == before
