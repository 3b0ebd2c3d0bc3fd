"""The oneDNN CPU kernels of the corpus pass against float64 numpy and torch's own kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from kisstore.errors import InputError
from kisstore.extract import ExtractOptions, run_extract
from kisstore.extract import accumulate as acc
from kisstore.extract.accumulate import SecondMoment
from kisstore.extract.cpu_kernels import (
    copied_weight_bytes,
    onednn_available,
    onednn_linears,
    resolve,
)
from kisstore.store import packed
from tests.conftest import run_cli

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no usable oneDNN linear op")


def _keys(seed: int, sizes, d: int) -> list[np.ndarray]:
    """Keys with columns of very different scales (as real MLP activations have)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.05, 20.0, d).astype(np.float32)
    return [(rng.standard_normal((n, d)).astype(np.float32) * scale) for n in sizes]


def _numpy_sum(keys) -> np.ndarray:
    return sum(k.astype(np.float64).T @ k.astype(np.float64) for k in keys)


@needs_onednn
@pytest.mark.parametrize("d", [1000, 1536, 64])
def test_onednn_second_moment_equals_float64_numpy(d, monkeypatch):
    monkeypatch.setattr(acc, "STAGE_BYTES", 64 * 1024)  # rectangles in row chunks of the staging bound
    keys = _keys(0, (700, 1, 37, 900, 1200, 0, 333), d)
    m = SecondMoment(d, kernels="onednn")
    assert m.kernels == "onednn" and len(m._edges) - 1 == min(max(d // acc.PANEL, 1), acc.MAX_PANELS)
    with torch.inference_mode():  # as in the corpus pass; total() below runs outside it
        for k in keys[:4]:
            m.add(torch.from_numpy(k))
    for k in keys[4:]:  # and numpy input, outside inference mode
        m.add(k)
    expect = _numpy_sum(keys)
    got = m.total()
    assert m.count == sum(len(k) for k in keys)
    np.testing.assert_array_equal(got, got.T)
    assert np.abs(got - expect).max() / np.abs(expect).max() < 2e-6
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=2e-6 * np.abs(expect).max())


@pytest.mark.parametrize("kernels", [pytest.param("onednn", marks=needs_onednn), "torch"])
@pytest.mark.parametrize("d", [700, 1536])
def test_packed_sum_is_the_lower_triangle_of_float64_numpy_in_half_the_memory(kernels, d, monkeypatch):
    """The float64 sum is held as d(d+1)/2 numbers and nothing else outlives a batch; its packed
    layout is numpy's tril_indices order of Σkkᵀ, to float32 rounding of the products."""
    monkeypatch.setattr(acc, "STAGE_BYTES", 100_000)  # several row chunks per rectangle
    keys = _keys(4, (513, 2, 260), d)
    m = SecondMoment(d, kernels=kernels)
    for k in keys:
        m.add(k)
    held = sum(a.nbytes for a in m._rect) + sum(a.nbytes for a in m._diag)
    assert held == acc.layer_bytes(d) == 8 * d * (d + 1) // 2
    expect = _numpy_sum(keys)[np.tril_indices(d)]
    got = m.packed()
    assert got.shape == (d * (d + 1) // 2,)
    assert np.abs(got - expect).max() / np.abs(expect).max() < 2e-6
    np.testing.assert_array_equal(packed.unpack_symmetric(got, d)[np.tril_indices(d)], got)
    np.testing.assert_array_equal(packed.pack_lower(packed.unpack_symmetric(got, d)), got)
    width = max(b - a for a, b in zip(m._edges, m._edges[1:], strict=False))
    assert acc.staging_bytes(d, kernels) <= max(4 * width * width, acc.STAGE_BYTES)


@needs_onednn
def test_onednn_and_torch_kernels_agree_to_float32_rounding():
    keys = _keys(1, (512, 640, 96), 1536)
    a, b = SecondMoment(1536, kernels="onednn"), SecondMoment(1536, kernels="torch")
    for k in keys:
        a.add(k)
        b.add(k)
    ta, tb = a.total(), b.total()
    assert np.abs(ta - tb).max() / np.abs(tb).max() < 2e-6
    assert not np.array_equal(ta, tb)  # two different kernels, really both run


@needs_onednn
@pytest.mark.parametrize("kernels", ["onednn", "torch"])
def test_restoring_a_checkpoint_after_any_batch_repeats_the_run_bit_for_bit(kernels):
    """No float32 partial sum outlives a batch: a run restored from the packed sum after any batch
    adds the rest exactly as the uninterrupted one did."""
    keys = _keys(2, (300, 250, 410, 120), 700)
    whole = SecondMoment(700, kernels=kernels)
    saved = []
    for k in keys:
        whole.add(k)
        saved.append((whole.packed(), whole.count))
    for cut in range(len(keys) - 1):
        resumed = SecondMoment(700, kernels=kernels)
        resumed.add(keys[3])  # a sum that load() must replace
        resumed.load(*saved[cut])
        for k in keys[cut + 1:]:
            resumed.add(k)
        assert resumed.count == whole.count
        np.testing.assert_array_equal(resumed.packed(), whole.packed())


@needs_onednn
def test_a_packed_sum_moves_between_kernel_paths():
    """The packed layout does not depend on the kernels' block edges (192- vs 384-column blocks)."""
    keys = _keys(3, (400,), 1536)
    a = SecondMoment(1536, kernels="onednn")
    a.add(keys[0])
    b = SecondMoment(1536, kernels="torch")
    b.load(a.packed(), a.count)
    assert a._edges != b._edges
    np.testing.assert_array_equal(b.packed(), a.packed())
    np.testing.assert_array_equal(b.total(), a.total())
    with pytest.raises(ValueError, match="packed sum of d_ff 1536"):
        b.load(np.zeros((1536, 1536)), 1)  # a full matrix (an earlier checkpoint's) is never read as packed


@needs_onednn
def test_onednn_linears_compute_the_same_layer_and_are_removed_after():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 80), torch.nn.GELU(), torch.nn.Linear(80, 16, bias=False),
                                torch.nn.Linear(16, 8).double())
    x = torch.randn(3, 11, 48)
    sub = model[:3]
    with torch.inference_mode():
        ref = sub(x)
        strided = sub(x.transpose(0, 1))
        with onednn_linears(model) as n:
            got = sub(x)
            got_strided = sub(x.transpose(0, 1))  # non-contiguous input is made contiguous first
            assert n == 2  # the float64 layer keeps torch's kernel
            assert "forward" in vars(model[0]) and "forward" not in vars(model[3])
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_strided.numpy(), strided.numpy(), rtol=1e-5, atol=1e-6)
    assert all("forward" not in vars(m) for m in model.modules())
    with onednn_linears(model):  # autograd on: torch's own kernel, so gradients still flow
        y = sub(x.requires_grad_())
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_onednn
def test_gpt2_conv1d_layers_run_on_onednn_with_the_same_results():
    """GPT-2's Conv1D (weight stored (in, out)) is switched too, through a transposed copy."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    from tests.tiny import config_for

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_for("gpt2")).eval()
    ids = torch.randint(0, 300, (2, 17))
    n_conv = sum(type(m) is Conv1D for m in model.modules())
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        ref = model.transformer(ids).last_hidden_state
        with onednn_linears(model) as n:
            got = model.transformer(ids).last_hidden_state
    assert n_conv == 12 and n == n_conv + n_linear  # 4 per block × 3 blocks, and the LM head
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched
    with onednn_linears(model):  # autograd on: Conv1D's own forward, gradients reach its weight
        model.transformer(ids).last_hidden_state.sum().backward()
    assert model.transformer.h[0].mlp.c_fc.weight.grad.abs().sum() > 0


def test_copied_weight_bytes_counts_gpt2_conv1d_weights_only():
    """What the default memory budget sets aside: GPT-2's four Conv1D weights per block, nothing for Llama."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import config_for

    gpt2 = AutoModelForCausalLM.from_config(config_for("gpt2"))
    expect = 4 * sum(blk.attn.c_attn.weight.numel() + blk.attn.c_proj.weight.numel() + blk.mlp.c_fc.weight.numel()
                     + blk.mlp.c_proj.weight.numel() for blk in gpt2.transformer.h)
    assert expect > 0 and copied_weight_bytes(gpt2) == expect
    assert copied_weight_bytes(AutoModelForCausalLM.from_config(config_for("llama"))) == 0
    assert copied_weight_bytes(gpt2.to(torch.float64)) == 0  # only float32 layers are switched


@needs_onednn
def test_a_forward_someone_else_wrapped_is_left_alone():
    lin = torch.nn.Linear(8, 4)

    def theirs(x):
        return torch.zeros(x.shape[0], 4)

    lin.forward = theirs
    with onednn_linears(lin) as n:
        assert n == 0 and lin.forward is theirs
    assert lin.forward is theirs


def test_resolve():
    assert resolve("auto", "cuda:0") == "torch" and resolve("onednn", "cuda") == "torch"
    assert resolve("torch", "cpu") == "torch"
    assert resolve("auto", "cpu") == ("onednn" if onednn_available() else "torch")
    with pytest.raises(InputError, match="unknown --cpu-kernels"):
        resolve("mkl", "cpu")


def test_without_onednn_auto_falls_back_and_onednn_is_refused(monkeypatch):
    """A torch build without the op (here: the probe's answer replaced) is never used silently."""
    import kisstore.extract.cpu_kernels as ck

    monkeypatch.setattr(ck, "onednn_available", lambda: False)
    assert ck.resolve("auto", "cpu") == "torch"
    assert SecondMoment(64).kernels == "torch"
    with pytest.raises(InputError, match="no usable oneDNN"):
        ck.resolve("onednn", "cpu")


@needs_onednn
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_extraction_with_either_kernels_gives_the_same_store_contents(arch, tiny_models, tiny_items, tiny_corpus,
                                                                      tmp_path):
    out = {}
    for kernels in ("onednn", "torch"):
        store = tmp_path / f"{kernels}.zarr"
        opts = ExtractOptions(models=[str(tiny_models[arch])], store=str(store), items=str(tiny_items),
                              corpus=str(tiny_corpus), progress=False, max_length=48, cpu_kernels=kernels)
        (mid,) = run_extract(opts)
        ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
        assert ds.attrs["cpu_kernels"] == kernels
        out[kernels] = ds
    a, b = out["onednn"], out["torch"]
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(a["cov"].values, b["cov"].values, rtol=1e-5, atol=1e-6 * float(np.abs(b["cov"]).max()))
    np.testing.assert_array_equal(a["key"].values, b["key"].values)  # the item pass keeps torch's kernels


def test_unknown_cpu_kernels_is_a_usage_error(tmp_path):
    r = run_cli("extract", "--model", "smollm2-135m", "--store", str(tmp_path / "s.zarr"), "--cpu-kernels", "mkl")
    assert r.returncode == 2 and "--cpu-kernels" in r.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_unknown_cpu_kernels_through_the_python_api_touches_nothing(tiny_models, tiny_items, tiny_corpus, tmp_path):
    store = tmp_path / "s.zarr"
    opts = ExtractOptions(models=[str(tiny_models["llama"])], store=str(store), items=str(tiny_items),
                          corpus=str(tiny_corpus), progress=False, cpu_kernels="mkl")
    with pytest.raises(InputError, match="unknown --cpu-kernels 'mkl'"):
        run_extract(opts)
    assert not store.exists()
