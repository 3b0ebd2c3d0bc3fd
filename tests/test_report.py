"""The HTML + PNG report: files, figures at the chosen layers and dpi, self-contained HTML, the
variables other analyses add, two analyses side by side, and the page in a real browser."""

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import xarray as xr
from click.testing import CliRunner

from kisstore.analysis import analyze, scaling_table
from kisstore.analysis import report_data as rd
from kisstore.analysis.report import PARAM_TICK_JS, build_report
from kisstore.analysis.synthetic import write_synthetic_store
from kisstore.store import open_store
from kisstore_cli.main import cli

MODELS = {"small": {"n_layers": 3, "d_ff": 10, "n_params": 10_000},
          "large": {"n_layers": 5, "d_ff": 14, "n_params": 1_300_000_000}}
N_ITEMS = 20
DPI = 60


def numpy_p(keys: np.ndarray, cov: np.ndarray, ridge: float = 0.0) -> np.ndarray:
    """P_ij = k_i^T C^-1 k_j / k_i^T C^-1 k_i, written from the paper's formula (no kisstore code)."""
    c = cov + ridge * np.mean(np.diag(cov)) * np.eye(cov.shape[0])
    g = keys.astype(np.float64) @ np.linalg.solve(c, keys.astype(np.float64).T)
    return g / np.diag(g)[:, None]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    path = str(tmp / "store.zarr")
    arrays = write_synthetic_store(path, MODELS, n_items=N_ITEMS)
    out = tmp / "report"
    r = CliRunner().invoke(cli, ["analyze", path, "--report", str(out), "--dpi", str(DPI), "--quiet"])
    assert r.exit_code == 0, r.output
    return {"store": path, "out": out, "arrays": arrays}


def test_report_folder_holds_html_pngs_at_first_middle_last_layer_and_scaling_table(made):
    out = made["out"]
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "scaling.csv", "scaling.parquet", "kurtosis_by_layer.png", "scaling_params.png"} <= names
    for model, layers in (("small", (0, 1, 2)), ("large", (0, 2, 4))):
        for lay in range(MODELS[model]["n_layers"]):
            for kind in ("p_matrix", "kde", "angles"):
                assert (f"{kind}_{model}_layer{lay}.png" in names) == (lay in layers), (kind, model, lay)
        assert f"convergence_{model}.png" in names
    # --dpi sets the resolution: the wide figures are 8 inches wide
    assert png_size(out / "kurtosis_by_layer.png")[0] == 8 * DPI
    assert png_size(out / "convergence_large.png")[0] == 8 * DPI


def test_pngs_are_not_blank(made):
    from PIL import Image

    for name in ("kurtosis_by_layer.png", "p_matrix_large_layer2.png", "angles_small_layer1.png",
                 "scaling_params.png"):
        img = np.asarray(Image.open(made["out"] / name).convert("L"), dtype=np.float64)
        assert (img < 200).mean() > 0.02, name  # ink: lines, text, colour


def test_report_html_is_self_contained_and_shows_paper_reference(made):
    text = (made["out"] / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert not re.search(r"<link[^>]*\bhref=\"https?://", text)
    assert "GPT-2 small (paper" in text and "read off the paper repository&#x27;s notebook" in text
    for title in ("Excess kurtosis of P by depth", "large: convergence", "top pairs of the selected layer",
                  "Scaling with model size", "Scaling table"):
        assert title in text, title
    assert "1.3B" in text and "10k" in text  # the scaling table's parameter column


def test_report_layers_option_draws_those_layers_and_refuses_unanalysed_ones(made, tmp_path):
    import shutil

    store = str(tmp_path / "s.zarr")
    shutil.copytree(made["store"], store)  # these analyses replace the shared store's
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["analyze", store, "--model", "large", "--layers", "0-3",
                                 "--report", str(out), "--report-layers", "1,-2", "--dpi", "40", "--quiet"])
    assert r.exit_code == 0, r.output
    drawn = sorted(p.name for p in out.glob("p_matrix_*.png"))
    assert drawn == ["p_matrix_large_layer1.png", "p_matrix_large_layer3.png"]
    r = CliRunner().invoke(cli, ["analyze", store, "--model", "large", "--layers", "0-2",
                                 "--report", str(tmp_path / "bad"), "--report-layers", "4", "--quiet"])
    assert r.exit_code == 2
    assert "--report-layers" in r.output and "not analysed" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["analyze", store, "--report", str(tmp_path / "bad2"), "--dpi", "5"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["analyze", store, "--report-layers", "0"])
    assert r.exit_code == 2 and "needs --report" in r.output


def test_kurtosis_curve_is_scipys_excess_kurtosis_of_numpy_p(made):
    tree = open_store(made["store"])
    ds = tree["analysis/large"].to_dataset()
    curve = rd.kurtosis_curve(ds)
    a = made["arrays"]["large"]
    for lay in range(MODELS["large"]["n_layers"]):
        p = numpy_p(a["keys"][lay], a["cov"][lay])
        want = scipy.stats.kurtosis(p[~np.eye(N_ITEMS, dtype=bool)], fisher=True)
        assert curve["value"][lay] == pytest.approx(want, rel=1e-6)
        assert curve["relative_depth"][lay] == pytest.approx(lay / 4)
    # the band is the stored bootstrap interval (analyze's default --bootstrap 200), around the value
    ci = ds["stats_ci"].sel(quantity="p_matrix", stat="excess_kurtosis").values
    np.testing.assert_allclose(curve["low"].to_numpy(), ci[:, 0])
    np.testing.assert_allclose(curve["high"].to_numpy(), ci[:, 1])
    assert (curve["low"] <= curve["high"]).all()


def test_symlog_param_labels_and_representative_layers():
    assert rd.symlog([-2, 0, 9, 99]) == pytest.approx([-np.log10(3), 0, 1, 2])
    ticks = dict((lab, pos) for pos, lab in rd.symlog_ticks(-1.5, 80))
    assert ticks["0"] == 0 and ticks["-1"] == pytest.approx(-np.log10(2)) and ticks["100"] == pytest.approx(np.log10(101))
    assert "-2" not in ticks and "1000" not in ticks
    assert [rd.param_label(n) for n in (134_515_008, 1_345_150_070, 10_000, 124e6, 6.05e9, 2.7e9)] == \
        ["135M", "1.3B", "10k", "124M", "6B", "2.7B"]
    assert rd.representative_layers(list(range(30))) == [0, 15, 29]
    assert rd.representative_layers([4]) == [4]


def _with_new_variables(ds: xr.Dataset) -> xr.Dataset:
    """The variables the schema-2 analyses add, built on a real analysis: excess_kurtosis,
    stats_ci, pair_stats, same-token/subject/relation flags, angle quantities, kde_x/kde_outside,
    subject/prompt coordinates on the item dims."""
    ds = ds.compute()
    ds = ds.assign_coords(stat=[("excess_kurtosis" if s == "kurtosis" else str(s)) for s in ds["stat"].values])
    ds = ds.reindex(quantity=[*map(str, ds["quantity"].values), "whitened_angle", "activation_angle"])
    stats = ds["stats"]
    ds["stats_ci"] = xr.concat([stats - 0.5, stats + 0.5], dim=pd.Index(["low", "high"], name="bound")).transpose(
        "layer", "quantity", "stat", "bound")
    ds["pair_stats"] = xr.concat([stats * f for f in (1.0, 0.8, 0.6, 1.2, 0.9)],
                                 dim=pd.Index(list(rd.PAIR_SETS), name="pair_set")).transpose(
        "layer", "quantity", "pair_set", "stat")
    rank = xr.DataArray(np.arange(ds.sizes["rank"]), dims="rank")
    ds["top_same_token"] = (rank % 2 == 0).broadcast_like(ds["top_p"])
    ds["top_same_subject"] = (rank == 1).broadcast_like(ds["top_p"])
    ds["top_same_relation"] = (rank < 3).broadcast_like(ds["top_p"])
    ds["kde_x"] = (ds["grid"] * 2.0).broadcast_like(ds["kde"])
    ds["kde_outside"] = xr.full_like(ds["kde"].isel(grid=0, drop=True), 0.0125)
    ids = ds["item"].values
    return ds.assign_coords(subject=("item", [f"Coord subject {c}" for c in ids]),
                            prompt=("item", ["{} plays for" for _ in ids]),
                            relation_id=("item", ["P54"] * len(ids)),
                            target_true=("item", ["Team"] * len(ids)))


def test_report_draws_new_variables_and_two_analyses_side_by_side(made, tmp_path):
    tree = open_store(made["store"])
    first = analyze(tree, models=["small"], ridge=0.0)
    second = analyze(tree, models=["small"], ridge=0.5)
    main = {"small": _with_new_variables(first["analysis/small"].to_dataset())}
    other = {"small": second["analysis/small"].to_dataset()}  # a 0.1-style analysis: stat "kurtosis"
    table = scaling_table(first)
    out = tmp_path / "cmp"
    paths = build_report(main, table, out, compare=other, compare_name="ridge-0.5", name="ridge-0", dpi=40,
                         layers="all")
    assert paths[0] == out / "index.html" and all(p.exists() for p in paths)
    text = paths[0].read_text(encoding="utf-8")
    # both analyses' kurtosis curves, the CI band of the first, the pair-set figure, the flags
    for label in ("small [ridge-0]", "small [ridge-0.5]", "small [ridge-0]: 95 % CI",
                  "excess kurtosis by pair set", "different_relation", "<th>same token</th>",
                  "<th>same relation</th>", "outside grid", "Coord subject 1003",
                  "95 % bootstrap interval (the bars: the first n items resampled)", "@low{0.00} to @high{0.00}"):
        assert label in text, label
    # one model: no scaling plot, a sentence saying why
    assert "a scaling plot needs two or more models" in text and not (out / "scaling_params.png").exists()
    # the top-pairs tables side by side hold each analysis' own P values, which are numpy's P
    a = made["arrays"]["small"]
    pos = {int(c): i for i, c in enumerate(a["case_ids"])}
    for tname, ridge, ds in (("ridge-0", 0.0, main["small"]), ("ridge-0.5", 0.5, other["small"])):
        slug = re.escape(re.sub(r"[^A-Za-z0-9_-]", "-", tname))
        block = re.search(rf'<div data-group="g0" data-layer="2" class="pairs-{slug}">(.*?)</table>', text, re.S)
        assert block, tname
        rows = re.findall(r'data-tip="P = (-?[\d.]+) \(layer 2, rank \d+\).*?\[case (\d+)\].*?\[case (\d+)\]"',
                          block.group(1), re.S)
        assert len(rows) == ds.sizes["rank"]
        p = numpy_p(a["keys"][2], a["cov"][2], ridge)
        for value, row, col in rows:
            assert float(value) == pytest.approx(p[pos[int(row)], pos[int(col)]], abs=6e-5)
        stored = np.asarray(ds["top_p"].sel(layer=2).values)
        assert [float(v) for v, _, _ in rows] == pytest.approx(stored, abs=6e-5)
    assert (out / "kurtosis_by_layer.png").exists() and (out / "p_matrix_small_layer1.png").exists()


CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
         "--disable-sync --no-first-run --hide-scrollbars --window-size=1400,1000").split()
TOOLTIPS = """
const out = [];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.shadowRoot) walk(el.shadowRoot);
    if (String(el.className).includes('bk-Tooltip') && el.shadowRoot)
      out.push([...el.shadowRoot.children].filter(c => c.tagName !== 'STYLE').map(c => c.innerText).join('\\n'));
  }
}
walk(document); return out.filter(t => t.trim());"""


@pytest.mark.slow
@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(DRIVER).exists()), reason="no chromium/chromedriver")
def test_report_in_headless_chromium_selectors_hovers_and_1400px_layout(made):
    import io
    import time

    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    tree = open_store(made["store"])
    try:
        driver.set_window_size(1400, 1000)
        driver.get((made["out"] / "index.html").resolve().as_uri())
        deadline = time.time() + 60
        while time.time() < deadline and not driver.execute_script("return document.body.dataset.ready === '1'"):
            time.sleep(0.1)
        time.sleep(0.5)
        width = driver.execute_script("return window.innerWidth")
        assert width == 1400

        # layout: the heatmap + side panel row and the full-width figures use most of the width
        def box(elem_id):
            return driver.execute_script("const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                                         "return [r.left, r.right, r.top, r.bottom];", elem_id)
        heat, side = box("g0-heat"), box("g0-side")
        assert side[1] - heat[0] >= 0.9 * width and heat[1] <= side[0]
        assert driver.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll

        # the layer selector switches the figures and filters the top-pairs table
        sel_el = driver.find_element(By.CSS_SELECTOR, 'select.layer-select[data-group="g0"]')
        model = sel_el.get_attribute("data-model")
        ds = tree[f"analysis/{model}"].to_dataset()
        sel = Select(sel_el)
        first, last = sel.options[0].get_attribute("value"), sel.options[-1].get_attribute("value")
        sel.select_by_value(last)
        time.sleep(0.5)
        vis = driver.execute_script("const d = Bokeh.documents[0]; return [arguments[0], arguments[1]].map("
                                    "n => d.get_model_by_name(n).visible)", f"g0|heat|{first}", f"g0|heat|{last}")
        assert vis == [False, True]
        shown = driver.find_elements(By.CSS_SELECTOR, '#g0-pairs [data-layer]:not([hidden]) tr[data-tip]')
        assert len(shown) == ds.sizes["rank"]
        p_shown = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in shown]
        assert p_shown == pytest.approx(ds["top_p"].sel(layer=int(last)).values, abs=6e-5)

        # table hover: the tooltip names both facts of the row, in full
        ActionChains(driver).move_to_element(shown[0]).perform()
        time.sleep(0.3)
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed()
        row_subject = str(ds["top_subject"].sel(layer=int(last)).values[0])
        col_subject = str(ds["top_subject_"].sel(layer=int(last)).values[0])
        assert f"row i (edited): {row_subject} — " in tip.text and f"column j (disturbed): {col_subject} — " in tip.text
        assert str(ds["top_prompt"].sel(layer=int(last)).values[0]).replace("{}", row_subject) in tip.text

        # heatmap hover: the tooltip names both facts, and its P is numpy's P of those two facts
        heat_el = driver.find_element(By.ID, "g0-heat")
        driver.execute_script("arguments[0].scrollIntoView()", heat_el)
        time.sleep(0.3)
        ActionChains(driver).move_to_element_with_offset(heat_el, -40, 20).perform()
        time.sleep(0.6)
        texts = driver.execute_script(TOOLTIPS)
        assert texts, "no heatmap tooltip"
        m = re.search(r"row i, edited:\s*Subject (\d+) — .*?column j, disturbed:\s*Subject (\d+) — .*?P_ij:\s*(-?[\d.]+)",
                      texts[0], re.S)
        assert m, texts[0]
        a = made["arrays"][model]
        pos = {int(c): i for i, c in enumerate(a["case_ids"])}
        p = numpy_p(a["keys"][int(last)], a["cov"][int(last)])
        assert float(m.group(3)) == pytest.approx(p[pos[int(m.group(1))], pos[int(m.group(2))]], abs=6e-5)

        # a screenshot at 1400 px: drawn across the width, not blank
        png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
        assert png.size[0] == 1400
        ink = np.asarray(png, dtype=np.float64) < 200
        assert ink.mean() > 0.05
        cols = np.flatnonzero(ink.any(axis=0))
        assert cols[-1] - cols[0] >= 0.9 * 1400
        # the scaling plot's tick formatter, run by the browser, writes parameters as param_label does
        for n in (10_000, 134_515_008, 1.3e9, 6.05e9, 2.7e9, 350e6, 1e12):
            assert driver.execute_script(f"const tick = arguments[0];{PARAM_TICK_JS}", n) == rd.param_label(n), n
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == []
