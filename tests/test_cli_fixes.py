"""Issue #17 item 6: command-line fixes, each tested through the real command line."""

from __future__ import annotations

import time

import pytest

from tests.conftest import run_cli

_NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}  # a port that refuses at once


def _timed(*args, env=None):
    start = time.perf_counter()
    proc = run_cli(*args, env=env)
    return proc, time.perf_counter() - start


def _one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert "retry" not in proc.stderr.lower() and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_alias_typo_is_refused_at_once_with_a_suggestion(tmp_path):
    proc, wall = _timed("extract", "--model", "smolm2-135m", "--corpus", "embedded",
                        "--store", str(tmp_path / "s.zarr"), env=_NO_HUB)
    assert proc.returncode == 2
    assert "did you mean smollm2-135m?" in _one_error_line(proc)
    assert wall < 10, wall
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, _NO_HUB], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_offline_hub_model_fails_fast_naming_the_offline_state(tmp_path, env):
    proc, wall = _timed("extract", "--model", "someone/some-model", "--corpus", "embedded",
                        "--store", str(tmp_path / "s.zarr"), env=env)
    assert proc.returncode == 2
    assert "offline" in _one_error_line(proc).lower()
    assert wall < 10, wall


def test_offline_wikipedia_corpus_fails_fast(tmp_path):
    proc, wall = _timed("extract", "--model", "smollm2-135m", "--corpus", "wikipedia", "--n-items", "4",
                        "--store", str(tmp_path / "s.zarr"), env=_NO_HUB)
    assert proc.returncode == 2
    assert "offline" in _one_error_line(proc).lower()
    assert wall < 10, wall


def test_hub_model_in_the_local_cache_is_not_refused_offline(tmp_path, monkeypatch):
    from kisstore.models import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "hub_cached", lambda *a, **k: True)
    source = loading.resolve_source("gpt2")
    assert source.kind == "hub"
    with pytest.raises(Exception) as e:  # AutoConfig is asked (and fails: nothing is really cached)
        loading.load_config(source)
    assert "the Hub cannot be reached" not in str(e.value)


_STORE_COMMANDS = {
    "info": [],
    "analyze": [],
    "export": ["--stats-dir", "STATS"],
    "edit": ["--model", "m", "--layer", "0", "--edits", "1"],
}


@pytest.mark.parametrize("command", sorted(_STORE_COMMANDS))
def test_store_option_and_positional_are_both_accepted(command, tmp_path):
    extra = [str(tmp_path / "stats") if a == "STATS" else a for a in _STORE_COMMANDS[command]]
    missing = str(tmp_path / "none.zarr")
    for form in (["--store", missing], [missing]):
        proc = run_cli(command, *form, *extra)
        assert proc.returncode != 0
        line = _one_error_line(proc)
        assert "none.zarr" in line and "No such option" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", sorted(_STORE_COMMANDS))
def test_both_or_neither_store_is_a_one_line_error(command, tmp_path):
    extra = [str(tmp_path / "stats") if a == "STATS" else a for a in _STORE_COMMANDS[command]]
    for form in (["a.zarr", "--store", "b.zarr"], []):
        proc = run_cli(command, *form, *extra)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "store" in proc.stderr.lower()


@pytest.mark.parametrize("where", ["first", "last"])
def test_debug_anywhere_on_the_line_shows_the_traceback(where, tmp_path):
    args = ["info", str(tmp_path / "none.zarr")]
    args = ["--debug", *args] if where == "first" else [*args, "--debug"]
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and "StoreError" in proc.stderr, proc.stderr


def test_info_lists_analyses_and_edit_runs_in_text_and_json(tmp_path):
    import json

    import zarr

    from kisstore.analysis.synthetic import write_synthetic_store

    path = str(tmp_path / "store.zarr")
    write_synthetic_store(path, {"a": {"n_layers": 3, "d_ff": 10}}, n_items=24)
    run_cli("analyze", path, "--layers", "0-1", "--n-items", "20", "--ridge", "0.1", check=True)
    run = zarr.open_group(path, mode="a").require_group("edits").require_group("a-direct-layer1-e5-seed0")
    run.attrs.update({"model_id": "a", "method": "direct", "layer": 1, "edits": 5, "tracked": 7,
                      "complete": True})
    zarr.consolidate_metadata(path)  # as kisstore edit does after writing a run
    summary = json.loads(run_cli("info", path, "--json", check=True).stdout)
    a = summary["analysis"]["a"]
    assert a["layers"] == [0, 1] and a["n_items"] == 20 and a["ridge"] == 0.1 and a["items"] == "all"
    assert summary["edits"]["a-direct-layer1-e5-seed0"] == {
        "model": "a", "method": "direct", "layer": 1, "layers": None, "batch": None, "edits": 5, "steps": 5,
        "tracked": 7, "complete": True}
    text = run_cli("info", path, check=True).stdout
    assert "/analysis/a  layers 0,1, 20 items (all), ridge 0.1" in text, text
    assert "/edits/a-direct-layer1-e5-seed0  [complete] direct on a layer 1, 5 edits in 5 steps, 7 tracked" in text, text


def _synthetic_store_on_corpus(path, corpus):
    from kisstore.analysis.synthetic import write_synthetic_store
    from kisstore.store.io import Store

    write_synthetic_store(str(path), {"m": {"n_layers": 2, "d_ff": 6}}, n_items=8)
    store = Store(str(path))
    store.set_attrs("models/m", {"corpus": corpus, "corpus_documents": 7, "name_or_path": "org/m",
                                 "hooked_module": "model.layers.{i}.mlp.down_proj"})
    store.consolidate()
    return str(path)


@pytest.mark.parametrize(("corpus", "ds_name", "folder", "warns"), [
    ("embedded", None, "python_docs_stats", True),
    ("/data/my corpus.jsonl", None, "my_corpus_stats", True),
    ("hf:someone/code-docs:en", None, "code-docs_stats", True),
    ("embedded", "wikipedia", "wikipedia_stats", True),
    ("wikipedia", None, "wikipedia_stats", False),
])
def test_rome_export_names_the_folder_after_the_real_corpus_and_warns(tmp_path, corpus, ds_name, folder, warns):
    store = _synthetic_store_on_corpus(tmp_path / "s.zarr", corpus)
    stats = tmp_path / "stats"
    proc = run_cli("export", store, "--stats-dir", str(stats), *(["--ds-name", ds_name] if ds_name else []))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (stats / "org_m").iterdir()) == [folder]
    assert len(list((stats / "org_m" / folder).iterdir())) == 2
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    if warns:
        assert len(warnings) == 1 and "not Wikipedia" in warnings[0] and folder in warnings[0], proc.stderr
        assert f"mom2_dataset   {folder.removesuffix('_stats')}" in proc.stdout
    else:
        assert not warnings, proc.stderr


def _last_bar(stderr: str, desc: str) -> str:
    frames = [f.strip() for f in stderr.replace("\r", "\n").splitlines() if f.strip().startswith(f"{desc}:")]
    assert frames, stderr
    return frames[-1]


def test_copy_progress_bar_ends_at_100_percent(tmp_path):
    from kisstore.analysis.synthetic import write_synthetic_store

    write_synthetic_store(str(tmp_path / "a.zarr"), {"m": {"n_layers": 3, "d_ff": 50}}, n_items=200)
    proc = run_cli("copy", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), check=True)
    assert "100%" in _last_bar(proc.stderr, "copy"), proc.stderr
    quiet = run_cli("copy", str(tmp_path / "a.zarr"), str(tmp_path / "c.zarr"), "--quiet", check=True)
    assert "copy:" not in quiet.stderr


def test_analyze_shows_a_progress_bar_that_ends_at_100_percent_and_quiet_hides_it(tmp_path):
    from kisstore.analysis.synthetic import write_synthetic_store

    path = str(tmp_path / "store.zarr")
    write_synthetic_store(path, {"a": {"n_layers": 3, "d_ff": 10}}, n_items=24)
    proc = run_cli("analyze", path, check=True)
    assert "100%" in _last_bar(proc.stderr, "analyze"), proc.stderr
    assert "analyze:" not in proc.stdout  # the bar is on stderr; stdout keeps its lines
    quiet = run_cli("analyze", "--store", path, "--quiet", check=True)
    assert "analyze:" not in quiet.stderr and "analysed 1 model(s)" in quiet.stdout
