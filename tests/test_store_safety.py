"""What a run does to a store it cannot finish, or should not touch: --overwrite with bad options,
resuming under another memory budget, complete models asked for with other settings, checkpoints
next to finished models, missing chunk files."""

from __future__ import annotations

import shutil
import signal

import numpy as np
import pytest
import xarray as xr
import zarr

from tests import tiny
from tests.conftest import run_cli, tree_digest


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    return tiny.corpus_file(tmp_path_factory.mktemp("long") / "corpus.txt", n_docs=400)


def _args(model, store, items, corpus, *extra):
    return ["extract", "--model", str(model), "--store", str(store), "--items", str(items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--batch-tokens", "1024", "--quiet", *extra]


@pytest.fixture(scope="module")
def reference(tiny_models, tiny_items, long_corpus, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus), check=True)
    return store


ONE_LAYER = "12KB"  # tiny llama, d_ff 36: one layer's packed float64 triangle (5,328 bytes) and the float32 staging (5,184)


@pytest.mark.parametrize("first,second", [(None, ONE_LAYER), (ONE_LAYER, None)])
def test_resuming_under_another_memory_budget_gives_the_uninterrupted_covariance(
        first, second, reference, tiny_models, tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"

    def budget(b):
        return ["--max-memory", b] if b else []

    killed = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, *budget(first)),
                     env={"KISSTORE_FAILPOINT": "checkpoint_write:7"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, *budget(second)), check=True)
    assert "grouping differs" in resumed.stdout
    got = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    ref = xr.open_datatree(reference, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(got["cov"].values, ref["cov"].values)
    np.testing.assert_array_equal(got["n_tokens"].values, ref["n_tokens"].values)


@pytest.mark.parametrize("bad,needle", [
    (["--module", "model.layers.{i}.mlp"], "input width"),
    (["--max-memory", "1KB"], "below one layer"),
])
def test_overwrite_with_a_bad_option_leaves_the_store_byte_identical(bad, needle, reference, tiny_models, tiny_items,
                                                                     long_corpus, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    before = tree_digest(store)
    res = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, "--overwrite", *bad))
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert tree_digest(store) == before


@pytest.mark.parametrize("bad,needle", [
    (["--module", "model.layers.{i}.mlp"], "input width"),
    (["--max-memory", "1KB"], "below one layer"),
])
def test_a_first_run_failing_on_bad_input_leaves_no_store_behind(bad, needle, tiny_models, tiny_items, long_corpus,
                                                                 tmp_path):
    store = tmp_path / "new.zarr"
    res = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, *bad))
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert "knows" not in res.stdout  # refused before the item pass
    assert not store.exists()


def test_a_folder_holding_other_files_is_not_made_a_store(tiny_models, tiny_items, long_corpus, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ([], ["--max-memory", "1KB"]):
        res = run_cli(*_args(tiny_models["llama"], folder, tiny_items, long_corpus, *extra))
        assert res.returncode == 2 and "holds other files" in res.stderr, res.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_a_resumed_run_reads_the_selection_its_first_attempt_stored(reference, tiny_models, tiny_items,
                                                                      long_corpus, tmp_path):
    """--known-only/--n-items: the first attempt's item pass covered every candidate and then wrote
    /items (a subset); the same command resumes, with the keys of the stored items."""
    from kisstore.store import Store

    store = tmp_path / "s.zarr"
    args = _args(tiny_models["llama"], store, tiny_items, long_corpus)
    assert run_cli(*args, env={"KISSTORE_FAILPOINT": "corpus_batch:15"}).returncode == -signal.SIGKILL
    items = xr.open_dataset(store, group="items", engine="zarr").load()
    s = Store(str(store))
    s.write_dataset("items", items.isel(item=[1, 4, 7]))  # as a selection of known items would be
    s.consolidate()
    res = run_cli(*args, check=True)
    assert "item pass: resumed from checkpoint" in res.stdout and "resuming corpus pass" in res.stdout
    got = xr.open_datatree(store, engine="zarr")["models/llama"].ds
    ref = xr.open_datatree(reference, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(got["item"].values, ref["item"].values[[1, 4, 7]])
    np.testing.assert_array_equal(got["key"].values, ref["key"].values[:, [1, 4, 7]])
    np.testing.assert_array_equal(got["cov"].values, ref["cov"].values)


def test_a_complete_model_asked_for_with_other_settings_is_refused(reference, tiny_models, tiny_items, long_corpus,
                                                                   tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    before = tree_digest(store)
    same = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus), check=True)
    assert "already complete" in same.stdout and "with these settings" in same.stdout
    for extra, needle in ((["--layers", "0-1"], "layers [0, 1, 2] → [0, 1]"), (["--token", "last"], "token_position"),
                          (["--corpus-tokens", "500"], "corpus_tokens None → 500"),
                          (["--layers", "0-40"], "out of range")):
        res = run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, *extra))
        assert res.returncode == 2 and needle in res.stderr, (extra, res.stderr)
    assert tree_digest(store) == before


def test_another_model_under_the_same_name_is_refused_and_a_moved_copy_is_not(
        reference, tiny_models, tiny_items, long_corpus, tmp_path, monkeypatch):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    other = tmp_path / "elsewhere" / "llama"  # same folder name, different model
    shutil.copytree(tiny_models["gpt2"], other)
    res = run_cli(*_args(other, store, tiny_items, long_corpus))
    assert res.returncode == 2 and "model " in res.stderr and "→" in res.stderr, res.stderr
    # the same model and corpus from another folder and working directory: still the same, skipped
    moved = tmp_path / "moved" / "llama"
    shutil.copytree(tiny_models["llama"], moved)
    corpus = tmp_path / "data" / long_corpus.name
    corpus.parent.mkdir()
    shutil.copy(long_corpus, corpus)
    monkeypatch.chdir(tmp_path)
    res = run_cli(*_args("./moved/llama", store, tiny_items, f"data/{long_corpus.name}"))
    assert res.returncode == 0 and "already complete" in res.stdout, res.stderr


def test_checkpoints_beside_finished_models_do_not_stop_readers(reference, tiny_models, tiny_items, long_corpus,
                                                                tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    killed = run_cli(*_args(tiny_models["gpt2"], store, tiny_items, long_corpus),
                     env={"KISSTORE_FAILPOINT": "corpus_batch:3"})
    assert killed.returncode == -signal.SIGKILL
    assert "[in progress]" in run_cli("info", str(store), check=True).stdout
    tree = xr.open_datatree(store, engine="zarr")  # plain xarray, the README's way
    assert "gpt2" in tree["_checkpoints"].children
    res = run_cli("analyze", str(store), "--ridge", "1e-3")
    assert res.returncode == 0, res.stderr
    # a checkpoint written before its arrays had dimension names (kisstore 0.1.0) is skipped too
    g = zarr.open_group(str(store), path="_checkpoints/old", mode="w")
    g.create_array("done", shape=(2, 3, 3), dtype="float64")
    zarr.consolidate_metadata(str(store))
    res = run_cli("analyze", str(store), "--ridge", "1e-3")
    assert res.returncode == 0, res.stderr


def test_verify_reports_a_missing_chunk_file(reference, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    assert run_cli("info", "--verify", str(store)).returncode == 0
    (store / "models" / "llama" / "cov" / "c" / "0" / "0" / "0").unlink()  # its one shard (store.chunking)
    res = run_cli("info", "--verify", str(store))
    assert res.returncode != 0
    assert "/models/llama/cov chunk (0, 0, 0): missing" in res.stdout + res.stderr


def test_analyze_all_layers_means_the_stored_ones(tiny_models, tiny_items, long_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    run_cli(*_args(tiny_models["llama"], store, tiny_items, long_corpus, "--layers", "0,2"), check=True)
    run_cli("analyze", str(store), "--ridge", "1e-3", check=True)
    assert xr.open_datatree(store, engine="zarr")["analysis/llama"]["layer"].values.tolist() == [0, 2]


def test_a_corpus_shorter_than_the_token_cap_is_used_whole_with_a_warning(tiny_models, tiny_items, tiny_corpus,
                                                                          tmp_path):
    store = tmp_path / "s.zarr"
    res = run_cli(*_args(tiny_models["llama"], store, tiny_items, tiny_corpus, "--corpus-tokens", "1000000"),
                  check=True)
    n = int(xr.open_datatree(store, engine="zarr")["models/llama"]["n_tokens"].values[0])
    assert f"ran out after {n} tokens, fewer than --corpus-tokens 1000000" in res.stdout


def test_an_unwritable_report_folder_fails_before_the_analysis(reference, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = tree_digest(store)
    res = run_cli("analyze", str(store), "--report", str(blocker / "report"))
    assert res.returncode == 2 and "--report" in res.stderr, res.stderr
    assert tree_digest(store) == before  # nothing analysed, nothing written


def test_the_selection_note_appears_only_when_the_flags_differ_from_the_stored_selection(
        tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    note = "the store already has its items"
    first = run_cli(*_args(tiny_models["llama"], store, tiny_items, tiny_corpus, "--n-items", "5"), check=True)
    same = run_cli(*_args(tiny_models["gpt2"], store, tiny_items, tiny_corpus, "--n-items", "5"), check=True)
    other = run_cli(*_args(tiny_models["gptj"], store, tiny_items, tiny_corpus, "--n-items", "3"), check=True)
    assert note not in first.stdout and note not in same.stdout
    assert note in other.stdout and "--n-items 5" in other.stdout
    tree = xr.open_datatree(store, engine="zarr")
    assert all(tree[f"models/{m}"]["item"].size == 5 for m in ("llama", "gpt2", "gptj"))
