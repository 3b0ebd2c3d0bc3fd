"""A resume checks that the corpus it skips over is the one the killed run read (issue #18 item 8).

The checkpoint records a SHA-256 of every 64-document window the pass has read; a resume
re-hashes the windows it skips and refuses, with the checkpoint kept, when they differ.
Kills are real SIGKILLs (``KISSTORE_FAILPOINT``)."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import xarray as xr

from tests import tiny
from tests.conftest import run_cli

N_DOCS = 400
KILL = {"KISSTORE_FAILPOINT": "corpus_batch:15"}


def _docs() -> list[str]:
    """The documents of ``tiny.corpus_file(n_docs=400)``."""
    return [" ".join(tiny.TEXT[(i + j) % len(tiny.TEXT)] for j in range(1 + i % 4)) for i in range(N_DOCS)]


def _args(model, store, items, corpus):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--batch-tokens", "1024", "--quiet"]


@pytest.fixture(scope="module")
def reference(tiny_models, tiny_items, tmp_path_factory):
    """An uninterrupted run over the 400 documents (the .txt and .jsonl corpora below hold the same)."""
    base = tmp_path_factory.mktemp("fpref")
    corpus = base / "corpus.txt"
    corpus.write_text("\n\n".join(_docs()))
    store = base / "ref.zarr"
    run_cli(*_args(tiny_models["llama"], store, tiny_items, corpus), check=True)
    return xr.open_datatree(store, engine="zarr")["models/llama"].ds.load()


def _killed(args):
    killed = run_cli(*args, env=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def _refused(args, store):
    before = json.loads((store / "_checkpoints" / "llama" / "zarr.json").read_text())["attributes"]
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = [x for x in refused.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert "the corpus changed since this run was checkpointed" in lines[0] and "--overwrite" in lines[0]
    assert "read before:" in lines[0] and "window" in lines[0]
    after = json.loads((store / "_checkpoints" / "llama" / "zarr.json").read_text())["attributes"]
    assert after == before  # the checkpoint is still there, untouched
    return lines[0]


def _resumes_to(args, store, reference):
    resumed = run_cli(*args, check=True)
    assert "resuming corpus pass" in resumed.stdout
    ds = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    assert ds.attrs["complete"] is True
    np.testing.assert_array_equal(ds["cov"].values, reference["cov"].values)
    np.testing.assert_array_equal(ds["key"].values, reference["key"].values)
    np.testing.assert_array_equal(ds["n_tokens"].values, reference["n_tokens"].values)
    assert ds.attrs["corpus_sha256"] == reference.attrs["corpus_sha256"]
    assert ds.attrs["corpus_documents"] == reference.attrs["corpus_documents"]


def test_a_glob_that_gains_a_file_is_refused_then_resumes_once_restored(reference, tiny_models, tiny_items,
                                                                       tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("\n\n".join(_docs()))
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, f"{folder}/*.txt")
    _killed(args)
    added = folder / "a.txt"  # sorts first: every document moves
    added.write_text("A new first document about something else entirely.\n\nAnd a second one.")
    line = _refused(args, store)
    assert "a.txt" in line  # the line names the file that came
    added.unlink()
    _resumes_to(args, store, reference)


def test_an_edited_file_is_refused_then_resumes_once_restored(reference, tiny_models, tiny_items, tmp_path):
    corpus = tmp_path / "corpus.txt"
    docs = _docs()
    corpus.write_text("\n\n".join(docs))
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, corpus)
    _killed(args)
    edited = [docs[0], docs[1], docs[2].replace("e", "E", 1), *docs[3:]]  # same name, one early document changed
    corpus.write_text("\n\n".join(edited))
    line = _refused(args, store)
    assert "from window 0 (documents 0–63)" in line
    corpus.write_text("\n\n".join(docs))
    _resumes_to(args, store, reference)


def test_a_jsonl_corpus_whose_earlier_line_changed_is_refused(reference, tiny_models, tiny_items, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = _docs()

    def write(texts):
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    write(docs)
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, corpus)
    _killed(args)
    write([*docs[:40], docs[40] + " Changed.", *docs[41:]])  # line 41: in window 0, read before the kill
    line = _refused(args, store)
    assert "from window 0 (documents 0–63)" in line
    write(docs)
    _resumes_to(args, store, reference)


def test_an_unchanged_corpus_resumes_and_records_its_fingerprint(reference, tiny_models, tiny_items, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(_docs()))
    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, corpus)
    _killed(args)
    _resumes_to(args, store, reference)
    sha = reference.attrs["corpus_sha256"]
    assert isinstance(sha, str) and len(sha) == 64 and int(sha, 16) >= 0


def test_a_sharded_rerun_over_a_changed_corpus_is_refused_then_completes(tiny_models, tiny_items, tmp_path):
    """--shards: each committed shard keeps its windows' digests; a rerun compares them with the
    corpus it counts before submitting anything."""
    from distributed import LocalCluster

    corpus = tmp_path / "corpus.txt"
    docs = _docs()[:300]
    corpus.write_text("\n\n".join(docs))
    store, ref = tmp_path / "s.zarr", tmp_path / "ref.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        def args(s):
            return ["extract", "--model", str(tiny_models["llama"]), "--store", str(s), "--items", str(tiny_items),
                    "--corpus", str(corpus), "--batch-tokens", "1024", "--quiet",
                    "--scheduler", cluster.scheduler_address, "--shards", "3"]

        killed = run_cli(*args(store), env={"KISSTORE_FAILPOINT": "shard_done:1"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # every document edited, none added: the shards' ranges stay, so whichever shard was committed differs
        corpus.write_text("\n\n".join(d.replace("e", "E", 1) for d in docs))
        refused = run_cli(*args(store))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        lines = [x for x in refused.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "the corpus changed since this run was checkpointed" in lines[0], refused.stderr
        assert "shards already committed" in lines[0] and "--overwrite" in lines[0]
        corpus.write_text("\n\n".join(docs))
        resumed = run_cli(*args(store), check=True)
        assert "(already committed)" in resumed.stdout
        run_cli(*args(ref), check=True)
    a = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    b = xr.open_datatree(ref, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(a["cov"].values, b["cov"].values, rtol=1e-10, atol=0)
    assert a.attrs["corpus_sha256"] == b.attrs["corpus_sha256"] and len(a.attrs["corpus_sha256"]) == 64


def _digests(corpus, **kw):
    from kisstore.extract.covariance import WindowHasher, open_documents

    h = WindowHasher(**kw)
    for text in open_documents(corpus):
        h.add(text)
    h.end_window(check=False)
    return h


def test_the_skipped_windows_are_checked_and_a_shrunk_or_grown_corpus_is_named(tmp_path):
    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.covariance import (
        CorpusChanged,
        WindowHasher,
        corpus_sha256,
        open_documents,
    )

    path = tmp_path / "c.txt"
    docs = _docs()[:150]
    path.write_text("\n\n".join(docs))
    corpus = resolve_corpus(str(path))
    windows = _digests(corpus).digests
    assert len(windows) == 3 and len(set(windows)) == 3
    assert list(open_documents(corpus, 128, WindowHasher(windows))) == docs[128:]  # unchanged: resumes
    path.write_text("\n\n".join([*docs[:100], docs[100] + "!", *docs[101:]]))
    with pytest.raises(CorpusChanged, match=r"windows 0–1 were read before: 1 of them differ, from window 1 "
                                            r"\(documents 64–127\)"):
        open_documents(corpus, 128, WindowHasher(windows))
    path.write_text("\n\n".join(docs[:100]))
    with pytest.raises(CorpusChanged, match="it now ends after 100 documents"):
        open_documents(corpus, 128, WindowHasher(windows))
    path.write_text("\n\n".join(docs + ["one more"]))  # the pass had ended at 150, in window 2
    with pytest.raises(CorpusChanged, match="were read before: the same ones; documents were added after the 150"):
        open_documents(corpus, 150, WindowHasher(windows), ended=True)
    path.write_text("\n\n".join(docs[:128]))  # a later pass reading fewer windows than an earlier one
    h = _digests(corpus, expect=windows)
    with pytest.raises(CorpusChanged, match="it now ends after 2 windows"):
        h.finish()
    assert corpus_sha256(windows) != corpus_sha256(windows[:2]) and corpus_sha256([]) is None
