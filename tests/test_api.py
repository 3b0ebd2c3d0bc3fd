"""The Python API: kisstore.extract is the CLI's run, kisstore.keys its item pass in memory,
kisstore.forgetting_table an edit run's table as a DataFrame."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

import kisstore
from kisstore.errors import InputError
from kisstore_cli.main import cli
from tests.conftest import copy_store


def _model(store, model_id: str) -> xr.Dataset:
    return xr.open_datatree(store, engine="zarr")[f"models/{model_id}"].ds.load()


def _items(store) -> xr.Dataset:
    return xr.open_datatree(store, engine="zarr")["items"].ds.load()


def test_import_kisstore_and_its_api_names_load_no_torch():
    code = ("import sys, kisstore; kisstore.keys, kisstore.forgetting_table, kisstore.load_model; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def api_store(tiny_models, tiny_items, tiny_corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "s.zarr"
    written = kisstore.extract(str(tiny_models["gpt2"]), str(path), items=str(tiny_items), corpus=str(tiny_corpus),
                               progress=False)
    return path, written


def test_extract_writes_what_the_command_line_writes(api_store, tiny_store):
    path, written = api_store
    cli_store = tiny_store("gpt2")  # `kisstore extract --model … --items … --corpus …` in a subprocess
    assert written == ["gpt2"]
    a, b = _model(path, "gpt2"), _model(cli_store, "gpt2")
    np.testing.assert_array_equal(a["layer"].values, b["layer"].values)
    np.testing.assert_array_equal(a["item"].values, b["item"].values)
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(a["key"].values, b["key"].values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["cov"].values, b["cov"].values, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(a["known"].values, b["known"].values)
    for key in ("corpus", "corpus_documents", "corpus_tokens", "max_length", "token_position", "layers",
                "hooked_module", "complete", "name_or_path"):
        assert a.attrs.get(key) == b.attrs.get(key), key


def test_extract_defaults_are_the_commands_defaults():
    import dataclasses

    import click

    from kisstore import api
    from kisstore.extract import ExtractOptions
    from kisstore_cli.extract import extract as command

    ctx = click.Context(command)
    fields = {f.name: f for f in dataclasses.fields(ExtractOptions)}
    rename = {"compile_": "compile"}
    checked = 0
    for param in command.params:
        name = rename.get(param.name, param.name)
        if name in ("models", "store", "storage_options", "quiet") or name not in fields:
            continue
        f = fields[name]
        default = api._CLI_DEFAULTS.get(name, f.default)
        want = param.get_default(ctx)
        assert default == want, f"kisstore.extract's {name}={default!r}, the command's {want!r}"
        checked += 1
    assert checked >= 20
    quiet = next(p for p in command.params if p.name == "quiet")
    assert api._CLI_DEFAULTS["progress"] is (not quiet.get_default(ctx))


def test_extract_again_on_a_complete_store_does_nothing(api_store, tiny_models, tiny_items, tiny_corpus):
    path, _ = api_store
    assert kisstore.extract([str(tiny_models["gpt2"])], str(path), items=str(tiny_items), corpus=str(tiny_corpus),
                            progress=False) == []


@pytest.mark.parametrize("kw,message", [
    ({"corpus_tokenz": 5}, "unknown option 'corpus_tokenz'"),
    ({"n_items": 0}, "--n-items must be positive"),
])
def test_extract_bad_options_raise_input_error(kw, message, tmp_path, tiny_models):
    with pytest.raises(InputError, match=message):
        kisstore.extract(str(tiny_models["gpt2"]), str(tmp_path / "s.zarr"), progress=False, **kw)
    assert not (tmp_path / "s.zarr").exists()


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return kisstore.load_model(str(tiny_models["gpt2"]), device="cpu")


def test_keys_with_targets_equal_the_stored_keys(gpt2, tiny_store):
    store = tiny_store("gpt2")
    items, stored = _items(store), _model(store, "gpt2")
    prompts = [str(p) for p in items["prompt"].values]  # CounterFact templates with {}
    got = kisstore.keys(gpt2, prompts, [str(s) for s in items["subject"].values],
                        targets=[str(t) for t in items["target_true"].values])
    assert got.dims == ("layer", "item", "d_ff") and got.shape == stored["key"].shape
    assert got.attrs["long_name"].startswith("MLP key")
    np.testing.assert_allclose(got.values, stored["key"].values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["known"].values, stored["known"].values)
    np.testing.assert_allclose(got["p_true"].values, stored["p_true"].values, rtol=1e-5)
    assert got["subject"].values.tolist() == items["subject"].values.tolist()


@pytest.mark.parametrize("position", ["subject_last", "subject_first", "last"])
def test_keys_of_prompts_alone_equal_the_item_pass_keys(position, gpt2, tiny_items):
    # the key sits in the prompt and attention is causal: the appended target cannot change it
    prompts = ["The capital of France is", "Danielle Darrieux speaks the language", "In Berlin, people speak"]
    subjects = ["France", "Danielle Darrieux", "Berlin"]
    alone = kisstore.keys(gpt2, prompts, subjects, position=position, layers=[0, 2])
    forced = kisstore.keys(gpt2, prompts, subjects, targets=["Paris"] * 3, position=position, layers="0,2")
    assert alone["layer"].values.tolist() == [0, 2]
    assert alone["prompt"].values.tolist() == prompts
    np.testing.assert_allclose(alone.values, forced.values, rtol=1e-5, atol=1e-6)
    # and by hand: the hooked module's input at the subject's last token, one prompt at a time
    import torch

    enc = gpt2.tokenizer(prompts[1], return_tensors="pt")
    seen = {}
    module = gpt2.key_site.find(gpt2.model, 2)
    handle = module.register_forward_pre_hook(lambda _m, args: seen.setdefault("k", args[0]))
    with torch.no_grad():
        gpt2.model(**enc)
    handle.remove()
    # the subject opens this prompt: its tokens are those of the subject tokenised alone
    tok = gpt2.tokenizer
    head = len(tok("x")["input_ids"]) - len(tok("x", add_special_tokens=False)["input_ids"])  # BOS, if any
    subject_ids = tok("Danielle Darrieux", add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][0, head:head + len(subject_ids)].tolist() == subject_ids
    pos = {"subject_last": head + len(subject_ids) - 1, "subject_first": head,
           "last": enc["input_ids"].shape[1] - 1}[position]
    np.testing.assert_allclose(alone.sel(layer=2).values[1], seen["k"][0, pos].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args,kw,message", [
    ((["The capital of France is"], ["Paris"]), {}, "is not in the prompt"),
    ((["The capital of {} is"], ["France", "Italy"]), {}, "1 prompts but 2 subjects"),
    (("The capital of {} is", "France"), {}, "lists of strings"),
    ((["The capital of {} is"], ["France"]), {"position": "middle"}, "unknown position"),
    ((["The capital of {} is"], ["France"]), {"targets": ["Paris", "Rome"]}, "1 targets|2 targets"),
    ((["The capital of {} is"], ["France"]), {"layers": "9"}, "layer"),
])
def test_keys_bad_input_raises_one_line_input_error(args, kw, message, gpt2):
    with pytest.raises(InputError, match=message) as e:
        kisstore.keys(gpt2, *args, **kw)
    assert "\n" not in str(e.value)


# -- forgetting_table --------------------------------------------------------------------
@pytest.fixture(scope="module")
def edited(tiny_store, tiny_models, tmp_path_factory):
    store = copy_store(tiny_store("gpt2"), tmp_path_factory.mktemp("api_edit"))
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "4", "--tracked", "5", "--tracked-from", "all", "--method", "direct",
                                   "--run", "r1", "--quiet"])
    assert res.exit_code == 0, res.output
    return store


def test_forgetting_table_is_the_edit_runs_curve_as_a_dataframe(edited):
    df = kisstore.forgetting_table(str(edited))
    ds = xr.open_datatree(edited, engine="zarr")["edits/r1"].ds.load()
    assert isinstance(df, pd.DataFrame) and df.index.name == "step"
    assert df.index.tolist() == list(range(ds.sizes["step"]))
    tracked = ds["role"].values == "tracked"
    # independently: the tracked facts' mean p(target_true) and top-1 accuracy at each step
    np.testing.assert_allclose(df["p_true"].values, ds["p_true"].values[:, tracked].mean(axis=1))
    np.testing.assert_allclose(df["top1"].values, ds["top1"].values[:, tracked].mean(axis=1))
    np.testing.assert_allclose(df["efficacy"].values, ds["efficacy"].values, equal_nan=True)
    from kisstore.edit.report import forgetting_table

    rows = forgetting_table(ds, every=2)  # the list the command line prints, unchanged
    got = kisstore.forgetting_table(ds, every=2)
    assert got.index.tolist() == [r["step"] for r in rows] and list(got.columns) == list(rows[0])[1:]
    np.testing.assert_array_equal(got.to_numpy(), np.array([list(r.values())[1:] for r in rows]))
    assert kisstore.forgetting_table(str(edited), "r1", every=3).index.tolist() == [0, 3, 4]


def test_forgetting_table_bad_run_is_one_line_input_error(edited, tiny_store):
    with pytest.raises(InputError, match=r"no edit run 'r2' .*runs: r1"):
        kisstore.forgetting_table(str(edited), "r2")
    with pytest.raises(InputError, match="holds 0 edit runs"):
        kisstore.forgetting_table(str(tiny_store("gpt2")))
    with pytest.raises(InputError, match="every must be a positive"):
        kisstore.forgetting_table(str(edited), every=0)
