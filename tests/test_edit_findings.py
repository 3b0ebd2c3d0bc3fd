"""scripts/edit_findings.py: the table docs/editing.md quotes and its side-by-side figure, on tiny runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import xarray as xr
from click.testing import CliRunner

from kisstore_cli.main import cli
from tests.conftest import copy_store

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "edit_findings.py"


def _script():
    spec = importlib.util.spec_from_file_location("edit_findings", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_findings_count_edits_per_step_and_tabulate_every_run(tiny_store, tiny_models, tmp_path):
    store = copy_store(tiny_store("gpt2"), tmp_path)
    common = ["--model", str(tiny_models["gpt2"]), "--tracked", "5", "--tracked-from", "all", "--eval-every", "0",
              "--quiet"]
    for args in (["--method", "direct", "--layer", "1", "--edits", "4", "--run", "d"],
                 ["--method", "memit", "--layers", "0-1", "--batch", "3", "--edits", "7", "--target", "direct",
                  "--run", "m"]):
        res = CliRunner().invoke(cli, ["edit", str(store), *common, *args])
        assert res.exit_code == 0, res.output
    f = _script()
    tree = xr.open_datatree(store, engine="zarr")
    m, d = tree["edits/m"].ds.load(), tree["edits/d"].ds.load()
    # 7 facts in batches of 3: 3, 6, 7 edited after steps 1-3; one a step for the direct run
    assert list(f.edits_done(m)) == [0, 3, 6, 7] and list(f.edits_done(d)) == [0, 1, 2, 3, 4]
    rows = {r["method"]: r for r in (f.summary("m", m), f.summary("d", d))}
    assert rows["memit"]["edits"] == 7 and rows["memit"]["steps"] == 3 and rows["direct"]["steps"] == 4
    assert rows["memit"]["r2_logp_drop"] == m.attrs["forecast"]["r2_logp_drop"]
    assert np.isclose(rows["memit"]["retention_end"], m["measured_retention"].values[-1], equal_nan=True)
    text = f.table(list(rows.values()))
    lines = text.splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    png = tmp_path / "methods.png"
    f.draw({"m": m, "d": d}, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
