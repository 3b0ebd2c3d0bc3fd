"""Sharded corpus pass on a real LocalCluster with worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from distributed import LocalCluster

from kisstore.extract import ExtractOptions, run_extract
from kisstore.extract.shards import plan
from tests import tiny


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny.corpus_file(tmp_path_factory.mktemp("c") / "corpus.txt", n_docs=300)


def _opts(model, store, items, corpus, **kw):
    return ExtractOptions(models=[str(model)], store=str(store), items=str(items), corpus=str(corpus),
                          progress=False, corpus_tokens=20000, batch_tokens=1024, **kw)


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tok.pad_token = tok.eos_token  # as kisstore.models.loading sets it
    return tok


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """Six huge documents (truncated to 1024 tokens: each a batch of its own, ~40 % of the tokens)
    among 400 tiny ones, in a fixed order."""
    import random

    rng = random.Random(7)
    docs = [" ".join(rng.choice(tiny.TEXT) for _ in range(120)) for _ in range(6)]
    docs += [rng.choice(tiny.TEXT).split(".")[0] + "." for _ in range(400)]
    rng.shuffle(docs)
    path = tmp_path_factory.mktemp("u") / "uneven.txt"
    path.write_text("\n\n".join(docs))
    return path


@pytest.fixture(scope="module")
def single(tiny_models, tiny_items, corpus, tmp_path_factory):
    """The single-process reference of gpt_neox, shared by the exactness tests."""
    import torch
    from threadpoolctl import threadpool_limits

    store = tmp_path_factory.mktemp("single") / "single.zarr"
    # Dask workers run BLAS and torch single-threaded; float32 products depend on the thread
    # count's blocking, so the reference runs single-threaded too: then only the float64
    # merge order differs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            run_extract(_opts(tiny_models["gpt_neox"], store, tiny_items, corpus))
    finally:
        torch.set_num_threads(before)
    return xr.open_datatree(store, engine="zarr")["models/gpt_neox"].ds


# (corpus, token cap, --batch-tokens, max_length): the demo (the embedded corpus at 25,000
# tokens, kisstore's default batches: one window, 27 documents) and an uneven synthetic corpus
CASES = {"embedded": ("embedded", 25000, 4096, 1024), "uneven": (None, None, 1024, 1024)}


@pytest.mark.parametrize("n_shards", [2, 3, 5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_shards_hold_equal_tokens_each_counted_once(case, n_shards, tokenizer, uneven):
    """Every shard holds n/K tokens to within 10 %; run through the worker's own reader and
    selection, the shards' batches are the single process's, and each token of each batch is
    added exactly once over all shards (a cut batch's tokens from a bound on are taken out by
    one shard and added by the next: the same rows, so the same float32 product)."""
    from kisstore.data.corpus import resolve_corpus
    from kisstore.extract.covariance import WINDOW, corpus_batches, count_documents
    from kisstore.extract.shards import select

    name, cap, batch_tokens, max_length = CASES[case]
    corpus = resolve_corpus(name or str(uneven))
    lengths: list[int] = []
    n_docs = count_documents(tokenizer, corpus, max_length=max_length, token_cap=cap, lengths=lengths)
    spans = plan(lengths, n_shards, batch_tokens=batch_tokens, window=WINDOW)
    n = sum(lengths)
    assert len(spans) == n_shards and sum(s.tokens for s in spans) == n
    assert max(abs(s.tokens - n / n_shards) for s in spans) <= 0.10 * n / n_shards, [s.tokens for s in spans]
    assert spans[0].docs[0] == 0 and spans[-1].docs[1] == n_docs
    assert all(a.docs[1] >= b.docs[0] for a, b in zip(spans, spans[1:], strict=False))  # no doc unread

    whole = {(b.window, b.part): b for b in corpus_batches(tokenizer, corpus, max_length=max_length,
                                                           batch_tokens=batch_tokens, token_cap=cap)}
    assert sum(b.tokens for b in whole.values()) == n
    added = {k: np.zeros(b.attention_mask.shape, dtype=np.int64) for k, b in whole.items()}
    taken_out: dict[tuple[int, int], np.ndarray] = {}
    for i, span in enumerate(spans):
        got = 0
        for b in select(corpus_batches(tokenizer, corpus, max_length=max_length, batch_tokens=batch_tokens,
                                       token_cap=None, skip_docs=span.docs[0],
                                       max_docs=span.docs[1] - span.docs[0]), span):
            ref = whole[(b.window, b.part)]
            assert np.array_equal(b.input_ids.numpy(), ref.input_ids.numpy())  # the single process's batch
            plus = b.attention_mask.numpy().astype(np.int64)
            added[(b.window, b.part)] += plus
            if (b.window, b.part) in taken_out:  # the previous shard took these rows out: the same ones
                assert np.array_equal(taken_out.pop((b.window, b.part)), plus), (i, b.window, b.part)
            if b.minus is not None:
                minus = b.minus.numpy().astype(np.int64)
                added[(b.window, b.part)] -= minus
                taken_out[(b.window, b.part)] = minus
            got += b.tokens
        assert got == span.tokens
    assert not taken_out
    for k, b in whole.items():
        np.testing.assert_array_equal(added[k], b.attention_mask.numpy())


def test_a_shard_holds_at_least_one_batch_of_tokens():
    lengths = [100] * 300  # 30,000 tokens
    assert len(plan(lengths, 50, batch_tokens=1024, window=64)) == 29
    assert len(plan(lengths, 50, batch_tokens=100_000, window=64)) == 1
    assert len(plan([0] * 10, 3, batch_tokens=1024, window=64)) == 1  # no tokens: one shard says so


def test_sharded_covariance_equals_single_process(cluster, single, tiny_models, tiny_items, corpus, tmp_path):
    sharded = tmp_path / "sharded.zarr"
    run_extract(_opts(tiny_models["gpt_neox"], sharded, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=3))
    a = single
    b = xr.open_datatree(sharded, engine="zarr")["models/gpt_neox"].ds
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(b["cov"].values, a["cov"].values, rtol=1e-10, atol=0)
    assert b.attrs["shards"] == 3 and b.attrs["shards_requested"] == 3
    from distributed import default_client

    with pytest.raises(ValueError):  # the run's client is closed, not left as the process's default
        default_client()


def test_provenance_records_the_shards_that_ran_not_the_upper_bound(cluster, tiny_models, tiny_items, corpus,
                                                                    tmp_path):
    store = tmp_path / "many.zarr"
    run_extract(_opts(tiny_models["gpt_neox"], store, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=50))
    ds = xr.open_datatree(store, engine="zarr")["models/gpt_neox"].ds
    attrs = ds.attrs
    ran = int(ds["n_tokens"].values[0]) // 1024  # a shard holds at least one batch (--batch-tokens) of tokens
    assert 1 <= ran < 50
    assert attrs["shards"] == ran and attrs["shards_requested"] == 50


def _killed_after_first_shard(model, store, items, corpus, scheduler: str, shards: int) -> list[str]:
    """Run a sharded extract that SIGKILLs itself once its first shard is done; return its argv,
    which resumes it."""
    import signal

    from tests.conftest import run_cli

    args = ["extract", "--model", str(model), "--store", str(store), "--items", str(items),
            "--corpus", str(corpus), "--corpus-tokens", "20000", "--batch-tokens", "1024", "--quiet",
            "--scheduler", scheduler, "--shards", str(shards)]
    killed = run_cli(*args, env={"KISSTORE_FAILPOINT": "shard_done:1"})
    assert killed.returncode == -signal.SIGKILL
    return args


def test_killed_sharded_run_redoes_only_unfinished_shards(cluster, tiny_models, tiny_items, corpus, tmp_path):
    from tests.conftest import run_cli

    store = tmp_path / "s.zarr"
    args = _killed_after_first_shard(tiny_models["llama"], store, tiny_items, corpus, cluster.scheduler_address, 3)
    resumed = run_cli(*args, check=True)
    assert resumed.stdout.count("(already committed)") >= 1
    reference = tmp_path / "ref.zarr"
    run_extract(_opts(tiny_models["llama"], reference, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=3))
    a = xr.open_datatree(store, engine="zarr")["models/llama"]["cov"].values
    b = xr.open_datatree(reference, engine="zarr")["models/llama"]["cov"].values
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)


def test_unknown_scheduler_address_is_a_clear_error(tiny_models, tiny_items, corpus, tmp_path):
    from kisstore.errors import InputError

    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        run_extract(_opts(tiny_models["llama"], tmp_path / "s.zarr", tiny_items, corpus,
                          scheduler="tcp://127.0.0.1:9", shards=2))
    assert not (tmp_path / "s.zarr").exists()


def test_sharded_compiled_pass_equals_the_uncompiled_one(cluster, tiny_models, tiny_items, corpus, tmp_path):
    """--compile --shards: each worker compiles its layers (inductor, C++ on a CPU) and frees its graphs."""
    plain, compiled = tmp_path / "plain.zarr", tmp_path / "compiled.zarr"
    run_extract(_opts(tiny_models["llama"], plain, tiny_items, corpus))
    run_extract(_opts(tiny_models["llama"], compiled, tiny_items, corpus, scheduler=cluster.scheduler_address,
                      shards=2, compile=True))
    a = xr.open_datatree(plain, engine="zarr")["models/llama"].ds
    b = xr.open_datatree(compiled, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(a["n_tokens"].values, b["n_tokens"].values)
    np.testing.assert_allclose(b["cov"].values, a["cov"].values, rtol=1e-5, atol=1e-8)
    assert b.attrs["compiled"] is True and a.attrs["compiled"] is False and b.attrs["shards"] == 2


def test_shards_cut_inside_batches_resume_and_equal_a_single_process(cluster, single, tiny_models, tiny_items,
                                                                     corpus, tmp_path):
    """--shards 5 here cuts batches (the nearest batch edge is too far from n/5 tokens); the client is
    killed after the first shard, the rerun keeps the plan its checkpoint recorded and redoes only
    the rest, and the merge equals the single process's to float64 rounding."""
    import zarr

    from tests.conftest import run_cli

    store = tmp_path / "s.zarr"
    args = _killed_after_first_shard(tiny_models["gpt_neox"], store, tiny_items, corpus, cluster.scheduler_address, 5)
    recorded = zarr.open_group(store, path="_checkpoints/gpt_neox", mode="r").attrs["state"]["shard_plan"]
    spans = recorded["spans"]
    assert len(spans) == 5 and any(s["start"][2] > 0 for s in spans)  # bounds inside batches
    n = sum(s["tokens"] for s in spans)
    assert max(abs(s["tokens"] - n / 5) for s in spans) <= 0.10 * n / 5
    resumed = run_cli(*args, check=True)
    assert resumed.stdout.count("(already committed)") >= 1
    b = xr.open_datatree(store, engine="zarr")["models/gpt_neox"].ds
    np.testing.assert_array_equal(b["n_tokens"].values, single["n_tokens"].values)
    assert int(b["n_tokens"].values[0]) == n
    np.testing.assert_allclose(b["cov"].values, single["cov"].values, rtol=1e-10, atol=0)
    assert b.attrs["shards"] == 5


@pytest.mark.parametrize("kernels", ["torch", "onednn"])
def test_a_negative_add_takes_products_and_tokens_out(kernels):
    """SecondMoment.add(k, sign=-1), what a cut batch's shard does with the next shard's rows."""
    from kisstore.extract.accumulate import SecondMoment
    from kisstore.extract.cpu_kernels import resolve

    if resolve(kernels, "cpu") != kernels:
        pytest.skip(f"{kernels} kernels unavailable here")
    rng = np.random.default_rng(0)
    k = rng.standard_normal((300, 500)).astype(np.float32)
    m = SecondMoment(500, "cpu", kernels)
    m.add(k)
    m.add(k[120:], sign=-1)
    assert m.count == 120
    ref = k[:120].astype(np.float64).T @ k[:120].astype(np.float64)
    np.testing.assert_allclose(m.total(), ref, rtol=0, atol=1e-3)  # float32 products of 300 and 180 rows
