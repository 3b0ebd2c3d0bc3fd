"""Smoke test of the benchmark code on a tiny model: the baselines we re-implemented compute the
same numbers as kisstore (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import covariance, pmatrix, report, scale
from benchmarks.common import Result, random_smollm2
from kisstore.data.corpus import resolve_corpus
from kisstore.data.items import load_items
from kisstore.extract.covariance import corpus_batches
from kisstore.extract.cpu_kernels import resolve


@pytest.fixture(scope="module")
def lm(tiny_models):
    from kisstore.models.loading import load_model

    return load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def batches(lm, tiny_corpus):
    return list(corpus_batches(lm.tokenizer, resolve_corpus(str(tiny_corpus)), max_length=64, batch_tokens=256,
                               token_cap=None))


def test_layer_stats_reimplementation_gives_kisstores_covariance(lm, batches):
    run = covariance.run(lm, batches, sample_layers=[0, 1, 2], device="cpu", progress=lambda _: None)
    by = {r.key: r for r in run.results}
    assert by["cov_max_rel_diff"].value <= 1e-5
    assert set(by["cov_max_rel_diff"].details["per_layer"]) == {0, 1, 2}
    assert run.n_tokens == sum(b.tokens for b in batches)
    # a layer_stats pass over all batches at once agrees with kisstore, layer by layer
    for layer in range(lm.n_layers):
        stat = covariance.Float32SecondMoment()
        covariance.layer_stats_pass(lm, layer, batches, stat)
        assert stat.count == run.n_tokens
        np.testing.assert_allclose(stat.moment(), run.covs[layer], rtol=1e-5, atol=1e-7)
    for key in ("cov_speedup", "overhead", "flop_efficiency"):
        assert np.isfinite(by[key].value) and by[key].value > 0


def test_paper_p_method_gives_kisstores_p(lm, batches, tiny_items):
    run = covariance.run(lm, batches, sample_layers=[1], device="cpu", progress=lambda _: None)
    items = load_items(str(tiny_items)).items[:5]
    ridge = pmatrix.pick_ridge(run.covs, [0, 2])
    for layer in (0, 2):
        paper = pmatrix.paper_p(lm, items, layer, run.covs[layer], ridge)
        ours = pmatrix.kisstore_p(lm, items, [layer], run.covs, ridge)[layer]
        np.testing.assert_allclose(np.diag(paper), 1.0, atol=1e-12)
        assert np.abs(paper - ours).max() <= 1e-6
        keys: dict = {}
        pmatrix.kisstore_p(lm, items, [layer], run.covs, ridge, keys)
        np.testing.assert_allclose(pmatrix.paper_algebra(keys[layer], run.covs[layer], ridge), ours, atol=1e-9)


def test_extrapolation_is_exact_for_linear_costs():
    times = {layer: 0.5 + 2.0 * (layer + 1) for layer in (0, 4, 9)}
    assert covariance.extrapolate_all_layers(times, 10) == pytest.approx(sum(0.5 + 2.0 * (i + 1) for i in range(10)))


def test_random_stand_in_runs_the_corpus_and_p_benchmarks():
    cfg = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
           "bos_token_id": 0, "eos_token_id": 256, "pad_token_id": 256}
    lm = random_smollm2("cpu", cfg)
    batches = list(corpus_batches(lm.tokenizer, resolve_corpus("embedded"), max_length=48, batch_tokens=128,
                                  token_cap=200))
    run = covariance.run(lm, batches, sample_layers=[0, 1], device="cpu", progress=lambda _: None)
    by = {r.key: r for r in run.results}
    assert by["cov_max_rel_diff"].value <= 1e-5
    assert by["overhead"].details["kernels"] == resolve("auto", "cpu")
    # the target row's baseline is the model's own forward; the body-only info row has the floor
    assert by["overhead"].details["tokens_per_s_forward"] > 0 and by["overhead"].details["baseline"]
    assert by["overhead_accumulators"].details["floor"] > 1
    # with kisstore's own CPU kernels, the pass is compared with the stock forward as well
    assert ("vs_stock_forward" in by) == (resolve("auto", "cpu") == "onednn")
    items = load_items(None).items[:3]  # the byte-level tokenizer locates subjects too
    ridge = pmatrix.pick_ridge(run.covs, [1])
    paper = pmatrix.paper_p(lm, items, 1, run.covs[1], ridge)
    assert np.abs(paper - pmatrix.kisstore_p(lm, items, [1], run.covs, ridge)[1]).max() <= 1e-6


def test_scale_plan_covers_the_papers_models():
    plan = scale.plan(0.5)
    rows = {r["model"]: r for r in plan["rows"]}
    assert len(rows) == 11
    assert rows["GPT-2 Small"]["acc_per_layer_GiB"] == pytest.approx(4 * 3072 * 3073 / 2**30)  # packed triangle
    assert rows["GPT-2 Small"]["passes"] == 1
    # packed accumulators: 40 layers × 4·13824² bytes (28.5 GiB) fit beside 13B's bfloat16 weights on one H100
    assert rows["Llama-2 13B"]["passes"] == 1 and rows["Llama-2 13B"]["layers_per_pass"] == 40
    # GPT-J / Pythia 6.9B: 28 / 32 layers × 4·16384² bytes (28 / 32 GiB) fit too; every model, one pass
    assert all(r["passes"] == 1 for r in rows.values())
    assert all(r["hours_8_gpus"] < r["hours_1_gpu"] for r in rows.values())


def test_report_renders_saved_results(tmp_path):
    res = [Result("overhead", "Overhead", 1.1, 1.25, "lower", "×",
                  {"tokens_per_s_forward": 10.0, "tokens_per_s_kisstore": 9.0, "ratio_of_totals": 1.1,
                   "lm_head_share": 0.25, "baseline": "the model's forward"}),
           Result("overhead_accumulators", "Accumulators", 1.3, None, "lower", "×",
                  {"tokens_per_s_bare": 12.0, "tokens_per_s_kisstore": 9.0, "ratio_of_totals": 1.3,
                   "floor": 1.2, "floor_definition": "syrk at the GEMM rate"})]
    payload = {"command": "python -m benchmarks", "mode": "quick", "elapsed_s": 60.0, "model": "tiny",
               "machine": {"date": "today", "cpu": "cpu", "cores": 2, "torch_threads": 2, "torch": "x",
                           "python": "3", "load_average": [1.0, 1.0, 1.0]},
               "results": [r.as_dict() for r in res], "scale": scale.plan(0.5), "notes": []}
    path = tmp_path / "results-cpu.json"
    report.save(payload, path)
    assert json.loads(path.read_text())["results"][0]["status"] == "PASS"
    doc = report.render({"cpu": path, "cuda": tmp_path / "missing.json"}, doc=tmp_path / "b.md")
    text = doc.read_text()
    assert "| Overhead | **1.1×** | ≤ 1.25× | PASS |" in text and "Llama-2 13B" in text
    assert "| Accumulators | **1.3×** | — | info |" in text
    assert "LM head takes 25 % of its time." in text and "Floor: 1.2× = syrk at the GEMM rate" in text
    # the results files in the repository (earlier runs' formats included) render too
    committed = report.render(report.RESULTS, doc=tmp_path / "committed.md").read_text()
    assert "## CPU" in committed and "## CUDA" in committed
    if report.SHARDS_RESULTS["cpu"].is_file():  # benchmark 8, saved on its own
        assert "## Shards on a LocalCluster (CPU; benchmark 8 alone)" in committed and "torch thread(s) each" in committed
    assert "PASS" in report.table(payload["results"])


def test_blocked_second_moment_matches_float64_numpy():
    """The torch path of the accumulator (CUDA's, and CPU's without oneDNN): upper-triangle
    row panels (4 blocks here) give Σkkᵀ to float32 rounding, below the diagonal blocks too once mirrored."""
    from kisstore.extract.accumulate import SecondMoment, block_edges

    rng = np.random.default_rng(0)
    keys = [rng.standard_normal((n, 1536)).astype(np.float32) for n in (100, 37)]
    m = SecondMoment(1536, kernels="torch")
    for k in keys:
        m.add(k)
    assert len(block_edges(1536)) == 5 and m.count == 137
    expect = sum(k.astype(np.float64).T @ k.astype(np.float64) for k in keys)
    np.testing.assert_allclose(m.total(), expect, rtol=2e-5, atol=1e-4)


def test_bad_batch_tokens_is_refused_before_any_work(capsys):
    from benchmarks.__main__ import main

    assert main(["--batch-tokens", "0", "--json", "/nonexistent/never-written.json"]) == 2
    assert "--batch-tokens must be positive" in capsys.readouterr().err


def test_profile_classes_kernel_names_and_writes_its_table(tmp_path):
    """`--only profile`: kernels are put in classes by name (names as CUDA and CPU profiles show
    them), and a profile of a tiny model's corpus pass adds up and is written out."""
    from benchmarks import profile
    from benchmarks.common import random_smollm2
    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.covariance import corpus_batches

    assert profile.classify("ampere_sgemm_128x64_nn") == "matmul"
    assert profile.classify("sm90_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x32") == "matmul"
    assert profile.classify("mkldnn::_linear_pointwise") == "matmul"
    assert profile.classify("fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)") == "attention"
    assert profile.classify("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert profile.classify("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctorOnSelf_add<double>>") == "float64 sums"
    assert profile.classify("aten::cat") == "other" and profile.classify("aten::embedding") == "other"

    cfg = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "pad_token_id": 256}
    lm = random_smollm2("cpu", cfg)
    batches = list(corpus_batches(lm.tokenizer, resolve_corpus("embedded"), max_length=64, batch_tokens=256,
                                  token_cap=600))
    out = tmp_path / "profile.txt"
    summary = profile.run(lm, batches[:2], device="cpu", out=out, progress=lambda _m: None)
    assert summary["tokens"] == sum(b.tokens for b in batches[:2]) > 0
    assert summary["per_class_s"]["matmul"] > 0
    assert abs(sum(summary["per_class_share"].values()) - 1) < 1e-9
    assert abs(sum(summary["per_class_s"].values()) - summary["device_time_s"]) < 1e-9
    text = out.read_text()
    assert "µs per token" in text and "Self CPU" in text


def test_unknown_only_part_is_refused(capsys):
    from benchmarks.__main__ import main

    assert main(["--only", "cov,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
