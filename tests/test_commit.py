"""Writes that keep earlier results: --overwrite replaces a model only once the new one is whole,
and drops its scaling rows; two extractions started together on a fresh store share one
selection of items; a commit's journal is completed by the next writer."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from tests import tiny
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    return tiny.corpus_file(tmp_path_factory.mktemp("long") / "corpus.txt", n_docs=400)


def _extract(model, store, items, corpus, *extra) -> list[str]:
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--quiet", *extra]


@pytest.fixture(scope="module")
def analysed(tiny_models, tiny_items, tiny_corpus, tmp_path_factory):
    """The tiny Llama and GPT-2 extracted and analysed in one store."""
    store = tmp_path_factory.mktemp("analysed") / "s.zarr"
    for arch in ("llama", "gpt2"):
        run_cli(*_extract(tiny_models[arch], store, tiny_items, tiny_corpus), check=True)
    run_cli("analyze", str(store), check=True)
    return store


def test_a_killed_overwrite_leaves_the_complete_model_and_its_analysis(analysed, tiny_models, tiny_items,
                                                                       long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(analysed, store)
    before = xr.open_datatree(store, engine="zarr")
    keys = before["models/llama"]["key"].values
    p = before["analysis/llama"]["p_matrix"].values
    args = _extract(tiny_models["llama"], store, tiny_items, long_corpus, "--overwrite", "--max-length", "17",
                    "--batch-tokens", "1024")
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:5"})
    assert killed.returncode == -signal.SIGKILL
    after = xr.open_datatree(store, engine="zarr")  # plain xarray, as any reader would
    assert after["models/llama"].attrs["complete"] is True
    np.testing.assert_array_equal(after["models/llama"]["key"].values, keys)
    np.testing.assert_array_equal(after["analysis/llama"]["p_matrix"].values, p)
    assert "llama" in [str(m) for m in after["analysis/scaling"]["model"].values]


def test_an_overwrite_drops_the_models_analysis_and_its_scaling_rows_once_complete(analysed, tiny_models,
                                                                                    tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(analysed, store)
    args = _extract(tiny_models["llama"], store, tiny_items, long_corpus, "--overwrite", "--max-length", "17",
                    "--batch-tokens", "1024")
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:5"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli(*args, check=True)  # the same command resumes the overwrite's own checkpoint
    assert "resuming corpus pass" in resumed.stdout
    tree = xr.open_datatree(store, engine="zarr")
    assert tree["models/llama"].attrs["max_length"] == 17
    assert "llama" not in tree["analysis"].children  # it described the replaced model
    assert [str(m) for m in tree["analysis/scaling"]["model"].values] == ["gpt2"]
    np.testing.assert_array_equal(tree["analysis/gpt2"]["p_matrix"].values,
                                  xr.open_datatree(analysed, engine="zarr")["analysis/gpt2"]["p_matrix"].values)
    assert "_checkpoints" not in tree.children and "_staging" not in tree.children


def test_two_extractions_started_together_on_a_fresh_store_share_one_item_selection(tiny_models, tiny_items,
                                                                                   tiny_corpus, tmp_path):
    """Each pauses after its item pass, so both have chosen items before either writes them."""
    import os

    store = tmp_path / "s.zarr"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "KISSTORE_PAUSE": "items:4"}
    procs = [subprocess.Popen([sys.executable, "-m", "kisstore_cli.main",
                               *_extract(tiny_models[arch], store, tiny_items, tiny_corpus, "--n-items", str(n))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for arch, n in (("llama", 6), ("gpt2", 4))]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outs
    for code, (_out, err) in zip(codes, outs, strict=True):
        assert code in (0, 2), err
        if code == 2:  # the only refusal: its selection is not among this run's candidates
            assert "another extraction wrote this store's items" in err and "Traceback" not in err
    tree = xr.open_datatree(store, engine="zarr")
    items = tree["items"]["item"].values
    for name, model in tree["models"].children.items():
        np.testing.assert_array_equal(model["item"].values, items, err_msg=name)
    assert len(tree["models"].children) == codes.count(0)


def test_a_journal_left_by_a_killed_commit_is_completed_by_the_next_writer(analysed, tmp_path):
    from kisstore.store import Store, commit

    store_path = tmp_path / "s.zarr"
    shutil.copytree(analysed, store_path)
    store = Store(str(store_path))
    # what a kill leaves just after the journal of an analysis commit: staged group, journal
    src = xr.open_zarr(store_path, group="analysis/gpt2", zarr_format=3, consolidated=False).load()
    for var in src.variables.values():
        var.encoding = {}
    store.write_dataset(commit.staged("analysis/llama"), src.assign_attrs(marker="new"))
    commit._write_journal(store, [commit.move(commit.staged("analysis/llama"), "analysis/llama")])
    commit._drop_consolidated(store)
    assert xr.open_datatree(store_path, engine="zarr")["analysis/llama"].attrs.get("marker") is None
    assert commit.recover(Store(str(store_path))) is True
    tree = xr.open_datatree(store_path, engine="zarr", consolidated=True)
    assert tree["analysis/llama"].attrs["marker"] == "new"
    assert "_staging" not in tree.children
    assert commit.recover(Store(str(store_path))) is False  # nothing left to do
