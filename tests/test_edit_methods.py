"""MEMIT and AlphaEdit applied over a layer range, in batches: their update rules against the
papers' formulas, predicted = measured = live per layer, bad input, and a resume after SIGKILL
that is bit-identical to an uninterrupted run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.edit import closed_form as cf
from kisstore.edit.methods import AlphaEdit, Memit
from kisstore_cli.main import cli
from tests.conftest import run_cli, tree_digest
from tests.test_edit import _store


def _spd(rng, d, evals):
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (q * evals) @ q.T, q


# -- the update rules against the papers' formulas (plain numpy, column notation) ----------------

def test_memit_update_is_memits_batched_closed_form():
    """MEMIT eq. 14: Δ = R Kᵀ (λC + K Kᵀ)⁻¹ (keys and residuals as columns), with an explicit inverse."""
    rng = np.random.default_rng(1)
    d, d_model, b, lam = 24, 7, 5, 37.0
    cov, _ = _spd(rng, d, rng.uniform(0.1, 3.0, d))
    kc, rc = rng.normal(size=(d, b)), rng.normal(size=(d_model, b))
    expected = rc @ kc.T @ np.linalg.inv(lam * cov + kc @ kc.T)
    adj = cf.memit_adjoint(kc.T, cov, lam)  # rows in, (d, B) out
    got = rc @ adj.T
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    # every key moves by Rᵀ(adjᵀk): the prediction the run records
    k = rng.normal(size=d)
    np.testing.assert_allclose(rc @ (adj.T @ k), expected @ k, rtol=1e-10)


def test_memit_with_one_key_is_romes_edit_shrunk_by_its_preservation_weight():
    """Sherman–Morrison: r kᵀ(λC + kkᵀ)⁻¹ = r (C⁻¹k)ᵀ / (λ + kᵀC⁻¹k), i.e. ROME's update times G/(λ + G)."""
    rng = np.random.default_rng(3)
    d, d_model, lam = 16, 4, 2.5
    cov, _ = _spd(rng, d, rng.uniform(0.2, 2.0, d))
    w, k, v = rng.normal(size=(d_model, d)), rng.normal(size=d), rng.normal(size=d_model)
    lower = np.linalg.cholesky(cov)
    rome = cf.rank_one_edit(w, k, v, lower)
    gram = float(k @ np.linalg.solve(cov, k))
    memit = (v - w @ k)[:, None] @ cf.memit_adjoint(k[None], cov, lam).T
    np.testing.assert_allclose(memit, (rome.apply(w) - w) * gram / (lam + gram), rtol=1e-10, atol=1e-13)


def test_alphaedit_update_is_alphaedits_formula_with_its_cache_and_protects_c():
    """AlphaEdit: Δ = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + L2·I)⁻¹, the cache growing by K₁K₁ᵀ each step;
    the update leaves C's dominant directions (eigenvalue ≥ threshold) untouched."""
    rng = np.random.default_rng(2)
    d, d_model, b, l2 = 20, 6, 3, 4.0
    cov, q = _spd(rng, d, np.concatenate([np.full(7, 5.0), np.full(13, 1e-3)]))
    method = AlphaEdit([0], cov[None], threshold=2e-2, l2=l2)
    assert method.ranks == [13]
    p = method.projectors[0]
    kp = np.zeros((d, 0))
    for _ in range(4):
        kc, rc = 2 * rng.normal(size=(d, b)), rng.normal(size=(d_model, b))
        expected = rc @ kc.T @ p @ np.linalg.inv(kp @ kp.T @ p + kc @ kc.T @ p + l2 * np.eye(d))
        got = rc @ method.adjoint(0, kc.T).T
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
        assert np.abs(got @ q[:, :7]).max() < 1e-10 * np.abs(got).max()  # the preserved directions
        method.after_step(0, kc.T)
        kp = np.concatenate([kp, kc], axis=1)
    np.testing.assert_allclose(method.cache[0], kp @ kp.T, rtol=1e-12)


def test_memit_splits_the_residual_over_the_layers_left():
    m = Memit([3, 4, 5, 6], np.stack([np.eye(2)] * 4), 1.0)
    assert [m.share(i) for i in range(4)] == [1 / 4, 1 / 3, 1 / 2, 1.0]


# -- runs on a tiny model -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_store(tiny_models, tiny_corpus, tmp_path_factory):
    return _store(tmp_path_factory.mktemp("methods_llama"), tiny_models["llama"], tiny_corpus)


def _run(store, model, *args):
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(model), "--tracked", "8",
                                   "--tracked-from", "all", "--quiet", *args])
    assert res.exit_code == 0, res.output
    return res


def _open(store, run):
    return xr.open_datatree(store, engine="zarr")[f"edits/{run}"].ds.load()


@pytest.mark.parametrize("method, extra", [("memit", ["--mom2-update-weight", "50"]),
                                           ("alphaedit", ["--nullspace-threshold", "0.05", "--nullspace-relative", "--alphaedit-l2", "1e-3"])])
def test_spread_edit_predicts_each_layers_change_and_the_live_model_at_the_first(method, extra, llama_store,
                                                                                  tiny_models):
    _run(llama_store, tiny_models["llama"], "--method", method, "--layers", "0-2", "--batch", "3", "--edits", "9",
         "--target", "rome", "--rome-steps", "4", "--run", method, *extra)
    ds = _open(llama_store, method)
    assert ds.sizes["step"] == 4 and list(ds["layer"].values) == [0, 1, 2]
    assert ds.attrs["max_relative_error"] < 1e-8  # predicted = measured (float64 algebra) at every layer
    assert ds.attrs["max_live_relative_error"] < 1e-4  # = live at the first layer (its keys never move)
    drift = ds["key_drift"].values[1:]
    assert np.nanmax(drift[:, 0]) < 1e-4 * np.nanmax(ds["live_norm"].values)  # layer 0's keys stay put
    assert np.nanmax(drift[:, 1:]) > 0  # above it, the edits below move the keys
    assert (ds["update_norm"].values[1:] > 0).all()
    assert list(np.unique(ds["edit_step"].values[:9])) == [1, 2, 3]
    # MEMIT lands (most of) the residual on the batch: z − h^L shrinks after its step
    rows = np.arange(9)
    before = ds["target_residual_norm"].values[ds["edit_step"].values[rows], rows]
    after = ds["target_remaining_norm"].values[ds["edit_step"].values[rows], rows]
    assert np.all(after < before)
    for name in ("live_relative_error", "key_drift", "update_norm"):
        assert ds[name].attrs.get("long_name")
    assert ds.attrs["layers"] == [0, 1, 2] and ds.attrs["batch"] == 3 and ds.attrs["method"] == method


def test_interference_of_an_edited_fact_counts_from_its_own_step(llama_store, tiny_models):
    _run(llama_store, tiny_models["llama"], "--method", "memit", "--layers", "1-2", "--batch", "2", "--edits", "4",
         "--target", "direct", "--run", "own-step")
    ds = _open(llama_store, "own-step")
    for i in range(4):
        s = int(ds["edit_step"].values[i])
        assert np.all(ds["interference_measured"].values[s, :, i] == 0)
        assert np.all(ds["interference_measured"].values[s + 1:, :, i] > 0) if s < 2 else True


BAD = {
    "unknown method": (["--method", "foo", "--layer", "0", "--edits", "2"], "unknown --method 'foo'"),
    "layers out of range": (["--method", "memit", "--layers", "0-9", "--edits", "2"], "out of range"),
    "zero batch": (["--method", "memit", "--layers", "0-1", "--batch", "0", "--edits", "2"],
                   "--batch must be at least 1"),
    "batch with rome": (["--method", "rome", "--layer", "0", "--batch", "2", "--edits", "2"], "--batch is for"),
    "layers with rome": (["--method", "rome", "--layers", "0-1", "--edits", "2"], "--layers is for"),
    "no layer": (["--method", "memit", "--edits", "2"], "needs --layers"),
    "bad lambda": (["--method", "memit", "--layers", "0-1", "--mom2-update-weight", "0", "--edits", "2"],
                   "--mom2-update-weight"),
    "unknown target": (["--method", "memit", "--layers", "0-1", "--target", "x", "--edits", "2"], "unknown --target"),
    "zero checkpoint": (["--method", "memit", "--layers", "0-1", "--checkpoint-every", "0", "--edits", "2"],
                        "--checkpoint-every"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_method_input_is_one_line_exit_2_and_leaves_the_store_unchanged(case, llama_store, tiny_models):
    args, needle = BAD[case]
    before = tree_digest(llama_store)
    res = CliRunner().invoke(cli, ["edit", str(llama_store), "--model", str(tiny_models["llama"]), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.startswith("Error:") and res.output.count("\n") == 1, res.output
    assert tree_digest(llama_store) == before


# -- checkpoints: a SIGKILL mid-run, the same command again, the same arrays -----------------------

def _cli(argv, env=None):
    return run_cli(*argv, env={"OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.slow  # four fresh interpreters per method (~90 s on the shared 2 cores)
@pytest.mark.parametrize("method", ["memit", "alphaedit", "rome", "direct"])
def test_a_run_killed_mid_way_resumes_from_its_checkpoint_bit_identical(method, llama_store, tiny_models, tmp_path):
    import shutil

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(llama_store, a)
    shutil.copytree(llama_store, b)
    spread = method in ("memit", "alphaedit")
    # memit/alphaedit: 12 edits in 6 steps of 2; rome/direct: 8 edits, one a step (chained checkpoints)
    shape = ["--layers", "0-2", "--batch", "2", "--edits", "12"] if spread else ["--layer", "1", "--edits", "8"]
    argv = ["--model", str(tiny_models["llama"]), "--method", method, *shape, "--tracked", "6", "--tracked-from",
            "all", "--rome-steps", "3", "--checkpoint-every", "2", "--eval-every", "2", "--nullspace-threshold", "0.05",
            "--nullspace-relative", "--alphaedit-l2", "1e-3", "--threads", "1", "--run", "r", "--quiet"]
    steps = 6 if spread else 8
    whole = _cli(["edit", str(a), *argv])
    assert whole.returncode == 0, whole.stderr
    assert not (a / "_staging").exists()  # nothing staged is left after the commit (no empty /_staging/edits)
    killed = _cli(["edit", str(b), *argv], env={"KISSTORE_FAILPOINT": "edit-step:5"})
    assert killed.returncode == -9, killed.stderr  # SIGKILL after step 5 (checkpoint after step 4)
    kept = sorted(p.name for p in (b / "_staging" / "edit-checkpoints" / "r").iterdir() if p.name.startswith("s"))
    # whole checkpoints replace each other; chained ones keep the rows of the steps since the one before
    assert kept == (["s000004"] if spread else ["s000002", "s000004"]), kept
    shown = _cli(["info", str(b)])  # the killed run is listed, with how to resume it
    assert shown.returncode == 0 and "/edits/r  [edit in progress] checkpoint after step 4" in shown.stdout, shown.stdout
    resumed = _cli(["edit", str(b), *argv[:-1]])  # the same command (with its per-step lines)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming /edits/r after step 4/{steps}" in resumed.stdout, resumed.stdout
    assert "[step 4/" not in resumed.stdout and f"[step 5/{steps}]" in resumed.stdout  # steps 1-4 not redone
    x, y = _open(a, "r"), _open(b, "r")
    assert not (b / "_staging").exists()
    # CounterFact's evaluation before the kill (steps 0, 2, 4) came back from the checkpoint
    assert list(x["eval_step"].values) == list(range(0, steps + 1, 2))
    assert np.isfinite(y["efficacy_score"].values).all()
    assert json.dumps(y.attrs["forecast"]) == json.dumps(x.attrs["forecast"])  # NaN-safe
    assert set(x.variables) == set(y.variables)
    for name in x.variables:
        if name == "seconds":
            continue  # wall clock
        np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)
    again = _cli(["edit", str(b), *argv[:-1]])
    assert again.returncode == 0 and "already complete" in again.stdout + again.stderr


def test_edit_benchmark_times_both_rules_against_re_solving_on_small_shapes():
    from benchmarks import editing

    results = {r.key: r for r in editing.run(d_ff=24, d_model=5, n_layers=2, batch=2, steps=4)}
    assert set(results) == {f"edit_{m}_{k}" for m in ("memit", "alphaedit") for k in ("edits_per_s", "scratch_ratio")}
    assert all(np.isfinite(r.value) and r.value > 0 for r in results.values())


def test_memit_on_a_model_benchmark_times_a_step_against_re_solving_and_one_batch_agrees(tiny_models):
    from benchmarks import editing
    from kisstore.models.loading import load_model

    lm = load_model(str(tiny_models["llama"]), device="cpu", dtype="float32")
    before = [p.detach().clone() for p in lm.model.parameters()]
    results = {r.key: r for r in editing.run_model(lm, layers=[0, 1, 2], batch=2, steps=3)}
    assert set(results) == {"edit_memit_model_edits_per_s", "edit_memit_model_scratch_ratio"}
    assert all(np.isfinite(r.value) and r.value > 0 for r in results.values())
    details = results["edit_memit_model_scratch_ratio"].details
    assert details["edits"] == 6 and details["steps"] == 3
    # at the first step both paths make the same update from W₀ (one batch), to the last bit
    assert details["first_step_max_abs_difference"] == 0.0
    assert all(np.array_equal(a, b.detach()) for a, b in zip(before, lm.model.parameters(), strict=True))

