"""The documented ad-hoc queries run on a real analysed store; analysis stays torch-free."""

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from kisstore.analysis.synthetic import write_synthetic_store
from kisstore_cli.main import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "adhoc-queries.md"


def test_adhoc_query_examples_run_against_an_analysed_store(tmp_path, capsys):
    path = str(tmp_path / "store.zarr")
    write_synthetic_store(path, {"m1": {}, "m2": {"n_layers": 2}}, n_items=20)
    assert CliRunner().invoke(cli, ["analyze", path]).exit_code == 0
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 5
    code = "\n".join(blocks).replace('url = "store.zarr"', f"url = {path!r}")
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "most superposed layer" in out and "p_matrix" in out


def test_analysis_package_never_imports_torch_or_transformers():
    code = ("import sys, kisstore.analysis, kisstore.analysis.report, kisstore.analysis.persist, "
            "kisstore.analysis.cluster, kisstore_cli.analyze; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_five_first_queries_give_what_numpy_and_scipy_give_on_unsorted_case_ids(tmp_path, capsys):
    """docs/adhoc-queries.md's five queries (and the plotting idiom), run as written on a store
    whose case ids are unsorted, checked against numpy/scipy on the same stored arrays."""
    import numpy as np
    import scipy.stats
    import xarray as xr

    from kisstore.analysis.synthetic import items_dataset, model_dataset, synthetic_model
    from kisstore.store import Store

    path = str(tmp_path / "store.zarr")
    ids = np.random.default_rng(5).permutation(np.arange(100, 100 + 5 * 24, 5))  # unsorted, 7 relations (step 5, coprime to 7)
    s = Store(path)
    s.init()
    s.write_dataset("items", items_dataset(ids))
    s.write_dataset("models/m", model_dataset(synthetic_model(np.random.default_rng(2), ids.size, 10, 2), ids))
    s.set_attrs("models/m", {"complete": True, "n_layers": 2})
    s.consolidate()
    assert CliRunner().invoke(cli, ["analyze", path, "--quiet"]).exit_code == 0
    assert CliRunner().invoke(cli, ["analyze", path, "--quiet", "--name", "r", "--ridge", "0.1"]).exit_code == 0
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    code = "\n".join(blocks).replace('url = "store.zarr"', f"url = {path!r}")
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    out = capsys.readouterr().out
    assert "within pairs:" in out and "between pairs:" in out and "r m {'items': 'all'" in out

    stored = xr.open_datatree(path, engine="zarr")["analysis/m"].to_dataset().load()
    p = stored["p_matrix"].values  # (layer, item, item_), rows in the store's (unsorted) order
    off = ~np.eye(ids.size, dtype=bool)
    # 1. kurtosis per layer: scipy's Fisher kurtosis of the off-diagonal entries
    np.testing.assert_allclose(ns["kurt"].values, [scipy.stats.kurtosis(p[k][off]) for k in range(2)], rtol=1e-9)
    # 2. the worst pairs at layer 0 by |P|, with the subjects of /items
    rows, cols = np.nonzero(off)
    order = np.argsort(-np.abs(p[0][rows, cols]))[:10]
    subjects = {int(c): str(t) for c, t in zip(ids, items_dataset(ids)["subject"].values, strict=True)}
    worst = ns["worst"].to_dataframe(name="P")
    np.testing.assert_allclose(worst["P"].values, p[0][rows[order], cols[order]], rtol=1e-12)
    assert worst["subject"].tolist() == [subjects[int(ids[r])] for r in rows[order]]
    assert worst["subject_"].tolist() == [subjects[int(ids[c])] for c in cols[order]]
    # 3. one fact's row, largest |P| first
    i = 3
    first = ns["table"].reindex(ns["table"]["P"].abs().sort_values(ascending=False).index).iloc[0]
    j = int(np.argmax(np.where(off[i], np.abs(p[0][i]), -1)))
    assert first["subject_"] == subjects[int(ids[j])] and np.isclose(first["P"], p[0][i, j])
    # the top pairs' text, joined by case id: the same pairs as numpy's ranking of |P|, with /items' subjects
    top_text = ns["top_text"]
    np.testing.assert_allclose(top_text["top_p"].values, p[0][rows[order], cols[order]], rtol=1e-12)
    assert top_text["subject"].tolist() == [subjects[int(ids[r])] for r in rows[order]]
    assert top_text["subject_"].tolist() == [subjects[int(ids[c])] for c in cols[order]]
    # 4. mean whitened angle per layer
    wa = stored["whitened_angle"].values
    np.testing.assert_allclose(ns["angles"].mean(["item", "item_"])["whitened_angle"].values,
                               [wa[k][off].mean() for k in range(2)], rtol=1e-9)
    # 5. within- vs between-relation excess kurtosis (relation_id = case id mod 7 here)
    rel = ids % 7
    same = (rel[:, None] == rel[None, :]) & off
    diff = (rel[:, None] != rel[None, :])
    assert same.sum() > 0 and diff.sum() > 0 and np.unique(rel).size == 7  # both sets hold pairs
    for mask, name in ((same, "within"), (diff, "between")):
        want = [scipy.stats.kurtosis(p[k][mask]) for k in range(2)]
        xmask = ns["same"] if name == "within" else ~ns["same"]
        got = ns["excess_kurtosis"](ns["p_all"].where(xmask)).values
        assert np.isfinite(want).all()
        np.testing.assert_allclose(got, want, rtol=1e-9)
