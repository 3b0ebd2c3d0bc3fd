"""Corpus sources read with the real ``datasets`` library, offline: local dataset folders (``hf:DIR``)
must give exactly the documents and covariances of the same text as a plain file, and an unreachable
Hub dataset must fail before any work, leaving no store behind."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr

from kisstore.data.corpus import resolve_corpus
from kisstore.errors import InputError
from kisstore.extract import ExtractOptions, run_extract
from tests.conftest import run_cli


def _docs(tiny_corpus) -> list[str]:
    return [d.strip() for d in tiny_corpus.read_text().split("\n\n") if d.strip()]


@pytest.fixture(scope="module")
def parquet_folder(tiny_corpus, tmp_path_factory):
    """The tiny corpus as a Hub-style data folder (two parquet shards, an extra column first)."""
    docs = _docs(tiny_corpus)
    root = tmp_path_factory.mktemp("hfdir")
    (root / "data").mkdir()
    half = len(docs) // 2
    for i, part in enumerate((docs[:half], docs[half:])):
        pq.write_table(pa.table({"id": [str(j) for j in range(len(part))], "text": part}),
                       root / "data" / f"train-0000{i}-of-00002.parquet")
    return root


def test_local_dataset_folder_streams_the_same_documents(parquet_folder, tiny_corpus):
    assert list(resolve_corpus(f"hf:{parquet_folder}").documents()) == _docs(tiny_corpus)


def test_saved_dataset_and_dataset_dict_are_read(tiny_corpus, tmp_path):
    from datasets import Dataset, DatasetDict

    docs = _docs(tiny_corpus)
    Dataset.from_dict({"body": docs, "n": list(range(len(docs)))}).save_to_disk(tmp_path / "one")
    assert list(resolve_corpus(f"hf:{tmp_path / 'one'}").documents()) == docs  # the only string column
    DatasetDict({"train": Dataset.from_dict({"text": docs[:3]}), "test": Dataset.from_dict({"text": ["x"]})}) \
        .save_to_disk(tmp_path / "dict")
    assert list(resolve_corpus(f"hf:{tmp_path / 'dict'}").documents()) == docs[:3]
    DatasetDict({"test": Dataset.from_dict({"text": ["x"]})}).save_to_disk(tmp_path / "notrain")
    with pytest.raises(InputError, match="no 'train' split"):
        resolve_corpus(f"hf:{tmp_path / 'notrain'}").probe()
    Dataset.from_dict({"n": [1, 2]}).save_to_disk(tmp_path / "numbers")
    with pytest.raises(InputError, match="no text column"):
        resolve_corpus(f"hf:{tmp_path / 'numbers'}").probe()


def test_covariance_from_a_dataset_folder_equals_the_file_corpus(parquet_folder, tiny_corpus, tiny_models,
                                                                 tiny_items, tmp_path):
    covs = []
    for name, corpus in (("file", tiny_corpus), ("hf", f"hf:{parquet_folder}")):
        store = tmp_path / f"{name}.zarr"
        (mid,) = run_extract(ExtractOptions(models=[str(tiny_models["llama"])], store=str(store),
                                            items=str(tiny_items), corpus=str(corpus), progress=False))
        ds = xr.open_datatree(store, engine="zarr")[f"models/{mid}"].ds
        covs.append((ds["cov"].values, int(ds["n_tokens"].max())))
        assert ds.attrs["corpus"] == str(corpus)
    (a, na), (b, nb) = covs
    assert na == nb > 0
    np.testing.assert_array_equal(a, b)


def test_unreachable_hub_dataset_fails_first_and_writes_nothing(tiny_models, tiny_items, tmp_path):
    store = tmp_path / "s.zarr"
    res = run_cli("extract", "--model", str(tiny_models["gpt2"]), "--store", str(store), "--items",
                  str(tiny_items), "--corpus", "hf:nobody/no-such-dataset", "--quiet",
                  env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot read nobody/no-such-dataset from the Hugging Face Hub" in res.stderr
    assert "Traceback" not in res.stderr
    assert not store.exists()


def test_hf_spec_without_a_name_is_refused():
    with pytest.raises(InputError, match="no dataset name"):
        resolve_corpus("hf:")
