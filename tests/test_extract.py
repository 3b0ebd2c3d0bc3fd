"""Extraction against independent computations on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import AutoModelForCausalLM, AutoTokenizer

from kisstore.data.items import load_items
from kisstore.extract import ExtractOptions, run_extract
from kisstore.extract.pipeline import one_layer_bytes
from kisstore.models.registry import KeySite
from tests import tiny

# written here independently of kisstore.models.registry
KEY_MODULE = {
    "gpt2": "transformer.h.{}.mlp.c_proj",
    "gptj": "transformer.h.{}.mlp.fc_out",
    "gpt_neox": "gpt_neox.layers.{}.mlp.dense_4h_to_h",
    "llama": "model.layers.{}.mlp.down_proj",
    "opt": "model.decoder.layers.{}.fc2",  # not in the registry: extracted with --module
}


def _extract(model_dir, store, items, corpus, **kw):
    opts = ExtractOptions(models=[str(model_dir)], store=str(store), items=str(items), corpus=str(corpus),
                          progress=False, **kw)
    return run_extract(opts)


def _extracted_and_reference(model_dir, store, items, corpus):
    """The stored model dataset after an extraction, and the same model loaded directly."""
    (mid,) = _extract(model_dir, store, items, corpus)
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    return ds, AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def _capture_all(model, arch, ids):
    """Every layer's down-projection input for one unpadded sequence, via our own hooks."""
    n = model.config.num_hidden_layers
    out = {}
    mods = dict(model.named_modules())
    handles = [mods[KEY_MODULE[arch].format(i)].register_forward_pre_hook(
        lambda m, a, i=i: out.__setitem__(i, a[0].reshape(-1, a[0].shape[-1]).double().clone()))  # OPT: flat
               for i in range(n)]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return [out[i].numpy() for i in range(n)]


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_keys_equal_an_unbatched_hook_at_the_last_subject_token(arch, tiny_models, tiny_items, tiny_corpus, tmp_path):
    ds, model, tok = _extracted_and_reference(tiny_models[arch], tmp_path / "s.zarr", tiny_items, tiny_corpus)
    for j, item in enumerate(load_items(str(tiny_items)).items):
        before_end = item.prompt.index("{}") + len(item.subject)
        pos = len(tok(item.text[:before_end])["input_ids"]) - 1
        ids = tok(f"{item.text} {item.target_true}")["input_ids"]
        per_layer = _capture_all(model, arch, ids)
        for layer in range(model.config.num_hidden_layers):
            np.testing.assert_allclose(ds["key"].values[layer, j], per_layer[layer][pos], rtol=1e-4, atol=1e-5)
    assert ds["key"].shape == (3, 12, ds.sizes["d_ff"])


def _numpy_cov(model_dir, arch, corpus, max_length, cap=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = [d.strip() for d in corpus.read_text().split("\n\n") if d.strip()]
    blocks = [[] for _ in range(model.config.num_hidden_layers)]
    seen = 0
    for doc in docs:
        if cap is not None and seen >= cap:
            break
        ids = tok(doc, truncation=True, max_length=max_length)["input_ids"]
        seen += len(ids)
        for layer, k in enumerate(_capture_all(model, arch, ids)):
            blocks[layer].append(k)
    ks = [np.concatenate(b) for b in blocks]
    return np.stack([k.T @ k / len(k) for k in ks]), len(ks[0])


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama"])
def test_covariance_equals_numpy_over_the_same_tokens(arch, tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models[arch], store, tiny_items, tiny_corpus, max_length=48)
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    expect, n = _numpy_cov(tiny_models[arch], arch, tiny_corpus, 48)
    assert (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)
    for c in ds["cov"].values:
        assert np.allclose(c, c.T)
        assert np.linalg.eigvalsh(c).min() > 0


def test_covariance_written_block_by_block_equals_numpy_and_keeps_the_store_layout(
        tiny_models, tiny_items, tiny_corpus, tmp_path, monkeypatch):
    """The final write stores cov one write block (shard) at a time from the checkpoint's packed
    sums: with shards of 2 of the 3 layers, the blocks are [0, 1] and [2], the array is sharded as
    the store's rule says, sealed, and equal to numpy's S / n over the same tokens."""
    import zarr

    from kisstore.extract.pipeline import cov_blocks
    from kisstore.store import chunking
    from kisstore.store.integrity import check_for_reading
    from kisstore.store.io import Store

    d = 36
    monkeypatch.setattr(chunking, "SHARD_BYTES", 2 * 8 * d * d)
    assert cov_blocks(3, d) == [range(0, 2), range(2, 3)]
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models["llama"], store, tiny_items, tiny_corpus, max_length=48)
    arr = zarr.open_array(store / "models" / mid / "cov", mode="r")
    assert (arr.shards, arr.chunks) == ((2, d, d), (1, d, d))
    check_for_reading(Store(str(store)), [f"models/{mid}"])  # every shard present, in its manifest's place
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    expect, n = _numpy_cov(tiny_models["llama"], "llama", tiny_corpus, 48)
    assert (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)


def test_token_cap_takes_whole_documents_until_reached(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models["gpt2"], store, tiny_items, tiny_corpus, corpus_tokens=500)
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    expect, n = _numpy_cov(tiny_models["gpt2"], "gpt2", tiny_corpus, 1024, cap=500)
    assert n >= 500 and (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)


def test_layers_split_over_several_passes_give_the_same_covariance(tiny_models, tiny_items, tiny_corpus, tmp_path):
    one = tmp_path / "one.zarr"
    many = tmp_path / "many.zarr"
    (mid,) = _extract(tiny_models["llama"], one, tiny_items, tiny_corpus)
    d = 36
    _extract(tiny_models["llama"], many, tiny_items, tiny_corpus, max_memory=one_layer_bytes(d))  # one layer per pass
    a = xr.open_datatree(one, engine="zarr")[f"models/{mid}"].ds
    b = xr.open_datatree(many, engine="zarr")[f"models/{mid}"].ds
    np.testing.assert_allclose(a["cov"].values, b["cov"].values, rtol=1e-12)
    xr.testing.assert_equal(a["key"], b["key"])


def test_selected_layers_only(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models["gpt_neox"], store, tiny_items, tiny_corpus, layers="0,-1")
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    assert ds["layer"].values.tolist() == [0, 2]


def test_known_and_p_true_follow_teacher_forced_argmax(tiny_models, tiny_items, tiny_corpus, tmp_path):
    arch = "gpt2"
    ds, model, tok = _extracted_and_reference(tiny_models[arch], tmp_path / "s.zarr", tiny_items, tiny_corpus)
    for j, item in enumerate(load_items(str(tiny_items)).items):
        n_prompt = len(tok(item.text)["input_ids"])
        ids = tok(f"{item.text} {item.target_true}")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        pred = logits[n_prompt - 1 : len(ids) - 1].argmax(-1).tolist()
        assert bool(ds["known"].values[j]) == (pred == ids[n_prompt:])
        p = torch.softmax(logits[n_prompt - 1], -1)[ids[n_prompt]].item()
        assert ds["p_true"].values[j] == pytest.approx(p, rel=1e-4)


def test_second_model_shares_items_and_complete_model_is_skipped(tiny_models, tiny_items, tiny_corpus, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    _extract(tiny_models["gpt2"], store, tiny_items, tiny_corpus, n_items=5)
    assert _extract(tiny_models["gpt2"], store, tiny_items, tiny_corpus, n_items=5) == []
    assert "already complete" in capsys.readouterr().out
    _extract(tiny_models["llama"], store, tiny_items, tiny_corpus)
    tree = xr.open_datatree(store, engine="zarr")
    assert set(tree["models"].children) == {"gpt2", "llama"}
    assert tree["models/llama"].ds.sizes["item"] == 5
    np.testing.assert_array_equal(tree["models/llama"]["item"].values, tree["items"]["item"].values)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_logits_at_chosen_pairs_equal_the_full_logits_there(arch, tiny_models):
    """The item pass runs the LM head on the target-predicting (row, position) pairs only."""
    from kisstore.extract.keys import pair_logits

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    ids = torch.randint(0, 250, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0
    pairs = [(0, 2), (1, 5), (2, 8), (0, 11), (1, 0)]
    rows, cols = [r for r, _ in pairs], [c for _, c in pairs]
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask).logits
        got = pair_logits(model, ids, mask, pairs)

        class NoHead(torch.nn.Module):  # a model whose head kisstore cannot reach: full logits, indexed
            def forward(self, input_ids, attention_mask, **kwargs):
                return model(input_ids=input_ids, attention_mask=attention_mask)

        fallback = pair_logits(NoHead(), ids, mask, pairs)
    handle.remove()
    assert seen[1] == (1, len(pairs), model.config.hidden_size if arch != "gpt2" else model.config.n_embd)
    assert got.shape == (len(pairs), full.shape[-1])
    np.testing.assert_allclose(got.numpy(), full[rows, cols].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fallback.numpy(), full[rows, cols].numpy())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_documents_longer_than_the_models_context_are_truncated_at_it(arch, tiny_models, tiny_items, tmp_path,
                                                                      capsys):
    """Found by review: the default --max-length 1024 on a model with 256 positions crashed GPT-2
    (IndexError in its position table, after the item pass) and ran rotary models silently past
    their context. Documents are now truncated at the context, as ROME's layer_stats does."""
    corpus = tmp_path / "long.txt"
    words = " ".join(f"word{i % 97} and more text" for i in range(400))  # far more than 256 tokens
    corpus.write_text(f"{words}\n\nA short second document about Paris and France.\n")
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models[arch], store, tiny_items, corpus)
    assert "longer than the model's context (256 positions)" in capsys.readouterr().out
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    assert ds.attrs["max_length"] == 256
    expect, n = _numpy_cov(tiny_models[arch], arch, corpus, 256)
    assert int(ds["n_tokens"].values[0]) == n > 256
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)


def test_target_tokens_include_a_space_token_whose_offsets_were_trimmed():
    """Found by review: a byte-level tokenizer whose post-processor trims offsets gives a token
    that is only a space an empty character span; the target's first token was dropped, so
    `p_true` scored the target's second token and `known` skipped one. Both tokenizers now see
    the same target: every non-special token after the prompt."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from kisstore.data.items import Item
    from kisstore.extract.positions import encode_item

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tiny.TEXT * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    encodings = {}
    for trim in (False, True):
        raw = bpe._tokenizer
        raw.post_processor = processors.ByteLevel(trim_offsets=trim)
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
        item = Item(1, "The capital of {} is", "France", "P36", "Qzxw", "Rome")  # an unseen word: "Ġ" stands alone
        enc = encode_item(tok, item)
        assert tok.decode([enc.input_ids[j] for j in enc.target_pos]) == " Qzxw"
        assert tok.decode(enc.input_ids[: enc.target_pos[0]]) == "The capital of France is"
        encodings[trim] = enc
    assert encodings[True] == encodings[False]


def test_threads_option_runs_the_pass_on_that_many_torch_threads(tiny_models, tiny_items, tiny_corpus, tmp_path):
    """`--threads 1` (in a child process: it sets torch's global thread count) gives the same store
    contents as the default, to float32 rounding."""
    import json
    import subprocess
    import sys

    from tests.conftest import run_cli

    stores = {}
    for threads in (None, "1"):
        store = tmp_path / f"s{threads}.zarr"
        args = ["extract", "--model", str(tiny_models["llama"]), "--store", str(store), "--items", str(tiny_items),
                "--corpus", str(tiny_corpus), "--quiet"] + (["--threads", threads] if threads else [])
        run_cli(*args, check=True)
        stores[threads] = xr.open_datatree(store, engine="zarr")["models/llama"].to_dataset().load()
    np.testing.assert_allclose(stores["1"]["cov"], stores[None]["cov"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stores["1"]["key"], stores[None]["key"], rtol=1e-5, atol=1e-6)
    # and the option reaches torch: a child process reports the thread count it ran with
    code = ("import json, torch; from kisstore.extract import ExtractOptions, run_extract; "
            f"run_extract(ExtractOptions(models=[{str(tiny_models['llama'])!r}], store={str(tmp_path / 't.zarr')!r}, "
            f"items={str(tiny_items)!r}, corpus={str(tiny_corpus)!r}, progress=False, threads=1)); "
            "print(json.dumps(torch.get_num_threads()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == 1


@pytest.fixture
def fresh_compiler():
    """torch.compile's caches live per code object for the whole process: start and end clean."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_compiled_corpus_pass_equals_numpy_with_layers_over_several_passes(
        arch, tiny_models, tiny_items, tiny_corpus, tmp_path, monkeypatch, fresh_compiler):
    """--compile, through the graph capture alone (no code generation): one layer per pass, so the
    key hook moves between compiled layers of one class inside one process."""
    import kisstore.extract.hooks as hooks

    monkeypatch.setattr(hooks, "BACKEND", "aot_eager")
    store = tmp_path / "s.zarr"
    (mid,) = _extract(tiny_models[arch], store, tiny_items, tiny_corpus, max_length=48, compile=True,
                      max_memory=one_layer_bytes(48))  # under three layers' accumulators for every tiny d_ff
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    expect, n = _numpy_cov(tiny_models[arch], arch, tiny_corpus, 48)
    assert (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)
    assert ds.attrs["compiled"] is True


def test_compiled_layers_are_put_back_as_they_were(tiny_models, fresh_compiler):
    """Leaving the context restores every layer's forward, one an offloading library had set too."""
    from kisstore.extract.hooks import compiled_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()
    layers = model.model.layers
    offload = layers[1].forward  # what accelerate's hooks do: a forward on the instance
    layers[1].forward = offload
    with compiled_layers(model, KeySite(KEY_MODULE["llama"].replace("{}", "{i}")), [1], backend="aot_eager"):
        assert "forward" in layers[0].__dict__ and layers[1].forward is not offload
        assert "forward" not in layers[2].__dict__  # past the last hooked layer: left alone
    assert "forward" not in layers[0].__dict__
    assert layers[1].__dict__["forward"] is offload


def test_compiled_corpus_pass_with_generated_kernels_equals_numpy(tiny_models, tiny_items, tiny_corpus, tmp_path,
                                                                 fresh_compiler):
    """`kisstore extract --compile` as a user runs it: inductor's generated kernels (C++ on a CPU)."""
    from tests.conftest import run_cli

    store = tmp_path / "s.zarr"
    r = run_cli("extract", "--model", str(tiny_models["llama"]), "--store", str(store), "--items", str(tiny_items),
                "--corpus", str(tiny_corpus), "--max-length", "48", "--compile", "--quiet")
    assert r.returncode == 0, r.stderr
    (mid,) = xr.open_datatree(store, engine="zarr")["models"].children
    ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
    expect, n = _numpy_cov(tiny_models["llama"], "llama", tiny_corpus, 48)
    assert (ds["n_tokens"].values == n).all()
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)
    assert ds.attrs["compiled"] is True


def test_compiled_pass_keeps_compiling_model_after_model_in_one_process(tiny_models, tiny_items, tiny_corpus, tmp_path,
                                                                        monkeypatch, fresh_compiler):
    """Every transformers 5 decoder layer class runs the same forward code, whose graphs torch
    caps (8 by default, then runs the rest uncompiled, silently): four architectures and a
    second Llama width, one layer per pass, in one process, must each be compiled, with the cap
    never reached (these five needed 10 graphs)."""
    import kisstore.extract.hooks as hooks

    widths: set[int] = set()

    def backend(gm, example_inputs):  # graph capture only, noting the weights' shapes it saw
        widths.update(int(d) for t in example_inputs if isinstance(t, torch.Tensor) for d in t.shape)
        return gm.forward

    monkeypatch.setattr(hooks, "BACKEND", backend)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    wide = tmp_path / "llama52"
    config = tiny.config_for("llama")
    config.intermediate_size = 52
    tiny.tokenizer_files(wide)
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    store = tmp_path / "s.zarr"
    archs = ["gpt2", "gptj", "gpt_neox", "llama"]
    ids = run_extract(ExtractOptions(models=[str(tiny_models[a]) for a in archs] + [str(wide)], store=str(store),
                                     items=str(tiny_items), corpus=str(tiny_corpus), progress=False, max_length=48,
                                     compile=True, max_memory=one_layer_bytes(52)))  # 1 layer a pass (d_ff 44–52) to 3 (36)
    configs = {a: tiny.config_for(a) for a in archs}
    d_ff = {52, configs["gpt2"].n_inner, configs["gptj"].n_inner, configs["gpt_neox"].intermediate_size,
            configs["llama"].intermediate_size}
    assert len(d_ff) == 5 and d_ff <= widths  # each model's layers were compiled
    tree = xr.open_datatree(store, engine="zarr")
    (llama,) = [m for m in ids if m.endswith("llama")]
    ds = tree[f"models/{llama}"].ds
    expect, n = _numpy_cov(tiny_models["llama"], "llama", tiny_corpus, 48)
    np.testing.assert_allclose(ds["cov"].values, expect, rtol=2e-5, atol=1e-7)


def test_compiled_pass_leaves_the_model_free_to_copy_and_save(tiny_models, tiny_corpus, monkeypatch, fresh_compiler):
    """Nothing of a compiled pass stays on the model: a deep copy passes on its own layers, and
    the model still pickles (a compiled forward kept on the module broke both)."""
    import copy
    import dataclasses
    import pickle

    import kisstore.extract.hooks as hooks
    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.covariance import accumulate, corpus_batches
    from kisstore.models.loading import load_model

    monkeypatch.setattr(hooks, "BACKEND", "aot_eager")
    lm = load_model(str(tiny_models["llama"]), device="cpu")
    layers = list(range(lm.n_layers))

    def covariances(model):
        moments = {i: SecondMoment(model.d_ff, "cpu", "torch") for i in layers}
        batches = corpus_batches(model.tokenizer, resolve_corpus(str(tiny_corpus)), max_length=48,
                                 batch_tokens=256, token_cap=None)
        accumulate(model, layers, batches, moments, compile=True)
        return np.stack([moments[i].total() for i in layers])

    first = covariances(lm)
    twin = dataclasses.replace(lm, model=copy.deepcopy(lm.model))
    np.testing.assert_array_equal(covariances(twin), first)  # the copy's own layers, not the original's
    pickle.dumps(lm.model)
    assert not [name for name, m in lm.model.named_modules() if set(m.__dict__) & {"forward", "_kisstore_compiled"}]
