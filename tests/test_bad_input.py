"""Bad input: a one-line message naming the problem, exit code 2, no traceback, store untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kisstore_cli.main import cli
from tests.conftest import run_cli, tree_digest


@pytest.fixture(scope="module")
def good_store(tiny_store):
    return tiny_store("gpt2")  # shared with other modules: the tests here prove it unchanged


@pytest.fixture(scope="module")
def opt_model(tmp_path_factory):
    """A real architecture that the registry does not list."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from tests import tiny

    d = tmp_path_factory.mktemp("opt")
    tiny.tokenizer_files(d)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, ffn_dim=40, num_attention_heads=4,
                             word_embed_proj_dim=32, max_position_embeddings=256)).save_pretrained(d)
    return d


def _write(tmp_path: Path, name: str, content) -> str:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(p)


def _record(**rw):
    base = {"prompt": "The capital of {} is", "subject": "France", "relation_id": "P36",
            "target_true": {"str": "Paris"}, "target_new": {"str": "Rome"}}
    base.update(rw)
    return {"case_id": 1, "requested_rewrite": base}


ITEM_CASES = {
    "not json": ("{not json", "not valid JSON"),
    "not a list": ({"case_id": 1}, "top level"),
    "missing subject": ([{"case_id": 1, "requested_rewrite": {k: v for k, v in _record()["requested_rewrite"].items()
                                                              if k != "subject"}}], "'subject' is missing"),
    "case id is a string": ([{**_record(), "case_id": "one"}], "case_id"),
    "no placeholder in prompt": ([_record(prompt="The capital is")], "no '{}' placeholder"),
    "two placeholders": ([_record(prompt="{} and {} is")], "exactly one"),
    "empty subject": ([_record(subject="")], "subject"),
    "blank target": ([_record(target_true={"str": "  "})], "target_true"),
    "duplicate case ids": ([_record(), _record()], "duplicate case_id"),
    "huge subject": ([_record(subject="x" * 5000)], "length 5000"),
    "target_new equals target_true": ([_record(target_new={"str": "Paris"})], "target_new equals"),
}


@pytest.mark.parametrize("case", ITEM_CASES)
def test_malformed_items_file_is_refused_and_store_unchanged(case, good_store, tiny_models, tiny_corpus, tmp_path):
    content, needle = ITEM_CASES[case]
    items = _write(tmp_path, "items.json", content)
    before = tree_digest(good_store)
    res = CliRunner().invoke(cli, ["extract", "--model", str(tiny_models["llama"]), "--store", str(good_store),
                                   "--items", items, "--corpus", str(tiny_corpus), "--quiet"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert res.output.strip().count("\n") == 0, res.output  # one line
    assert tree_digest(good_store) == before


def _options_cases(tmp_path, tiny_models, tiny_corpus, opt_model):
    empty = _write(tmp_path, "empty.txt", "  \n\n ")
    blocker = _write(tmp_path, "plainfile", "x")
    m = str(tiny_models["llama"])
    return {
        "unknown model": (["--model", "no-such-org/no-such-model-xyz"], "could not be loaded from the Hugging Face Hub"),
        "missing local model": (["--model", "./no/such/dir"], "not found"),
        "unknown architecture": (["--model", str(opt_model)], "unsupported architecture 'opt'"),
        "layer out of range": (["--model", m, "--layers", "0-7"], "out of range"),
        "bad layer spec": (["--model", m, "--layers", "two"], "bad layer spec"),
        "negative token count": (["--model", m, "--corpus-tokens", "-5"], "--corpus-tokens must be positive"),
        "absurd token count": (["--model", m, "--corpus-tokens", str(10**15)], "absurd"),
        "unknown device": (["--model", m, "--device", "tpu"], "unknown --device"),
        "unknown dtype": (["--model", m, "--dtype", "float8"], "unknown --dtype"),
        "zero items": (["--model", m, "--n-items", "0"], "--n-items must be positive"),
        "more items than available": (["--model", m, "--n-items", "1000"], "larger than the 12 items"),
        "empty corpus": (["--model", m, "--corpus", empty], "is empty"),
        "missing corpus": (["--model", m, "--corpus", "/no/such/corpus.txt"], "no such file"),
        "malformed url": (["--model", m, "--store", "s3:/"], "malformed store URL"),
        "unsupported scheme": (["--model", m, "--store", "ftp://host/x.zarr"], "unsupported store URL scheme"),
        "bad storage option": (["--model", m, "--storage-option", "novalue"], "bad --storage-option"),
        "bad memory size": (["--model", m, "--max-memory", "lots"], "bad size"),
        "unwritable store": (["--model", m, "--store", f"{blocker}/s.zarr"], "store"),
        "module without placeholder": (["--model", str(opt_model), "--module", "model.decoder.fc2"], "{i}"),
        "zero threads": (["--model", m, "--threads", "0"], "--threads must be positive"),
    }


@pytest.mark.parametrize("case", [
    "unknown model", "missing local model", "unknown architecture", "layer out of range", "bad layer spec",
    "negative token count", "absurd token count", "unknown device", "unknown dtype", "zero items",
    "more items than available", "empty corpus", "missing corpus", "malformed url", "unsupported scheme",
    "bad storage option", "bad memory size", "unwritable store", "module without placeholder", "zero threads",
])
def test_bad_option_is_refused_and_store_unchanged(case, good_store, tiny_models, tiny_items, tiny_corpus, opt_model,
                                                   tmp_path):
    args, needle = _options_cases(tmp_path, tiny_models, tiny_corpus, opt_model)[case]
    full = ["extract", "--store", str(good_store), "--items", str(tiny_items), "--corpus", str(tiny_corpus),
            "--quiet", *args]
    before = tree_digest(good_store)
    res = CliRunner().invoke(cli, full)
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output, res.output
    assert tree_digest(good_store) == before


def test_unlisted_architecture_works_with_module_override(opt_model, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    res = CliRunner().invoke(cli, ["extract", "--model", str(opt_model), "--store", str(store), "--items",
                                   str(tiny_items), "--corpus", str(tiny_corpus), "--module",
                                   "model.decoder.layers.{i}.fc2", "--quiet"])
    assert res.exit_code == 0, res.output
    import xarray as xr

    ds = xr.open_datatree(store, engine="zarr")[f"models/{opt_model.name}"].ds
    assert ds["key"].shape == (2, 12, 40)
    # OPT derives its positions from the attention mask; the padded, maskless corpus batches must
    # still give each document's own keys (reference: one unpadded forward per document)
    from tests.test_extract import _numpy_cov

    expect, n = _numpy_cov(opt_model, "opt", tiny_corpus, 1024)
    assert (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)


def test_debug_flag_shows_the_traceback(tiny_models, tiny_items, tmp_path):
    # in a subprocess: CliRunner records the SystemExit of any non-zero exit as `exception`, so only
    # the real stderr tells a traceback from the one-line error
    args = ["extract", "--model", str(tiny_models["llama"]), "--store", str(tmp_path / "s.zarr"),
            "--items", str(tiny_items), "--corpus", "/no/such.txt"]
    for line in (["--debug", *args], [*args, "--debug"]):
        proc = run_cli(*line)
        assert proc.returncode != 0
        assert "Traceback (most recent call last)" in proc.stderr and "InputError" in proc.stderr, proc.stderr
    plain = run_cli(*args)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
