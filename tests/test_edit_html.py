"""The HTML report of edit runs: offline, in a real (headless Chromium) browser."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from kisstore.edit import html as report_html
from kisstore_cli.main import cli
from tests.test_edit_metrics import _records

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def two_runs(tiny_models, tiny_corpus, tmp_path_factory):
    """Two runs of one store (different --direct-scale), the second writing the report."""
    from kisstore.extract import ExtractOptions, run_extract

    tmp = tmp_path_factory.mktemp("edit_html")
    items = tmp / "items.json"
    items.write_text(json.dumps(_records()))
    store = tmp / "s.zarr"
    run_extract(ExtractOptions(models=[str(tiny_models["gpt2"])], store=str(store), items=str(items),
                               corpus=str(tiny_corpus), progress=False))
    report = tmp / "report"
    base = ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layer", "1", "--edits", "6", "--tracked", "6",
            "--tracked-from", "all", "--method", "direct", "--eval-every", "2", "--items", str(items), "--quiet"]
    for extra in (["--run", "small", "--direct-scale", "0.5"],
                  ["--run", "large", "--direct-scale", "3", "--report", str(report), "--dpi", "72"]):
        res = CliRunner().invoke(cli, base + extra)
        assert res.exit_code == 0, res.output
    return store, report


@pytest.fixture(scope="module")
def methods_report(two_runs, tiny_models, tmp_path_factory):
    """The same store with a MEMIT and an AlphaEdit run added (layers 0-1, batches of 2); the
    AlphaEdit run writes `edit --report`, and `kisstore edit-report` draws all four runs."""
    store, _ = two_runs
    tmp = tmp_path_factory.mktemp("edit_html_methods")
    items = store.parent / "items.json"
    base = ["edit", str(store), "--model", str(tiny_models["gpt2"]), "--layers", "0-1", "--batch", "2", "--edits",
            "6", "--tracked", "6", "--tracked-from", "all", "--target", "direct", "--eval-every", "1", "--items",
            str(items), "--quiet"]
    res = CliRunner().invoke(cli, [*base, "--method", "memit", "--run", "memit", "--mom2-update-weight", "50"])
    assert res.exit_code == 0, res.output
    one = tmp / "one"
    res = CliRunner().invoke(cli, [*base, "--method", "alphaedit", "--run", "alphaedit", "--nullspace-threshold", "0.05",
                                   "--nullspace-relative", "--alphaedit-l2", "1e-3", "--report", str(one), "--dpi", "72"])
    assert res.exit_code == 0, res.output
    assert "4 runs" in res.output
    every = tmp / "every"
    res = CliRunner().invoke(cli, ["edit-report", str(store), str(every), "--dpi", "72"])
    assert res.exit_code == 0, res.output
    return store, one, every


def test_a_memit_or_alphaedit_run_reports_its_layers_and_the_methods_side_by_side(methods_report):
    store, one, every = methods_report
    for name in ("forgetting_curve.png", "predicted_vs_measured.png", "drift_by_layer.png", "counterfact_metrics.png",
                 "forecast.png", "methods_compared.png"):
        assert (one / name).read_bytes()[:4] == b"\x89PNG", name
    from PIL import Image

    with Image.open(one / "methods_compared.png") as im:  # --dpi 72: 15 × 4.4 inches
        assert im.size == (1080, 316)
    page = (one / "report.html").read_text()
    assert page.count('class="forgetting"') == 4 and page.count('class="compare"') == 1
    assert page.count('class="layerdrift"') == 2  # the MEMIT and the AlphaEdit run, each per layer
    # edit-report: every complete run of the model, each run's figures in its folder
    for run in ("small", "large", "memit", "alphaedit"):
        assert (every / run / "forgetting_curve.png").is_file(), run
    assert (every / "memit" / "drift_by_layer.png").is_file() and not (every / "small" / "drift_by_layer.png").exists()
    assert (every / "report.html").read_text().count('class="forgetting"') == 4


def test_the_per_layer_drift_and_the_comparison_are_the_stored_arrays(methods_report):
    from kisstore.edit import report

    store, _, _ = methods_report
    tree = xr.open_datatree(store, engine="zarr")
    ds = tree["edits/memit"].ds.load()
    d = report.drift_by_layer(ds)
    tracked = np.flatnonzero(ds["role"].values == "tracked")
    for li in range(2):  # recomputed from the stored norms by hand
        value = ds["value_norm"].values[li, tracked]
        np.testing.assert_array_equal(d["predicted"][li], ds["predicted_norm"].values[-1, li, tracked] / value)
        np.testing.assert_array_equal(d["live"][li], ds["live_norm"].values[-1, li, tracked] / value)
    curve = report.forgetting_curve(ds)
    assert list(curve["edited"]) == [0, 2, 4, 6]  # batches of 2: facts edited by each step
    step2 = (ds["role"].values == "edited") & (ds["edit_step"].values <= 2)
    assert curve["retention"][2] == pytest.approx(np.mean(ds["p_new"].values[2, step2]))
    rows = report.method_comparison([tree[f"edits/{r}"].ds.load() for r in ("large", "memit")])
    assert [r["edited"] for r in rows] == [6, 6] and [r["method"] for r in rows] == ["direct", "memit"]
    assert rows[1]["top1"] == pytest.approx(np.mean(ds["top1"].values[-1, tracked]))
    assert rows[1]["paraphrase_score"] == pytest.approx(float(ds["paraphrase_score"].values[-1]))


REPORT_BAD = {
    "unknown run": (["--run", "nope"], "no complete run 'nope'"),
    "unknown model": (["--model", "other"], "no edit run on model 'other'"),
    "bad dpi": (["--dpi", "5"], "--dpi must lie between"),
}


@pytest.mark.parametrize("case", list(REPORT_BAD))
def test_edit_report_bad_input_is_one_line_exit_2(case, methods_report, tmp_path):
    store, _, _ = methods_report
    args, needle = REPORT_BAD[case]
    res = CliRunner().invoke(cli, ["edit-report", str(store), str(tmp_path / "out"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.startswith("Error:") and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "out").exists()  # nothing written


def test_edit_report_of_a_store_without_runs_is_refused(tiny_models, tiny_corpus, tmp_path):
    res = CliRunner().invoke(cli, ["edit-report", str(tmp_path / "missing.zarr"), str(tmp_path / "out")])
    assert res.exit_code == 2 and "no store at" in res.output, res.output


def test_report_folder_holds_the_pngs_and_one_self_contained_html(two_runs):
    _, report = two_runs
    for name in ("forgetting_curve.png", "predicted_vs_measured.png", "interference_vs_p.png",
                 "counterfact_metrics.png", "forecast.png"):
        assert (report / name).read_bytes()[:4] == b"\x89PNG", name
    from PIL import Image

    with Image.open(report / "forecast.png") as im:  # --dpi 72: 10 × 4 inches
        assert im.size == (720, 288)
    page = (report / "report.html").read_text()
    assert "<script src" not in page and "<link" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # offline: nothing to fetch
    assert page.count('class="forgetting"') == 2  # both runs of the store, side by side


def test_hurt_most_lists_the_largest_drops_with_the_fact_text(two_runs):
    store, _ = two_runs
    ds = xr.open_datatree(store, engine="zarr")["edits/large"].ds.load()
    rows = report_html.hurt_most(ds, n=3)
    tracked = np.flatnonzero(ds["role"].values == "tracked")
    drop = np.log(ds["p_true"].values[0, tracked]) - np.log(ds["p_true"].values[-1, tracked])
    assert [r["drop"] for r in rows] == pytest.approx(sorted(drop, reverse=True)[:3])
    i = tracked[int(np.argmax(drop))]
    assert rows[0]["text"] == f"{ds['prompt'].values[i].replace('{}', ds['subject'].values[i])} → {ds['target_true'].values[i]}"


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="no headless Chromium here")
def test_report_in_a_real_browser_has_no_errors_tooltips_and_fits_1400px(two_runs, methods_report, tmp_path):
    pytest.importorskip("selenium")
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    store, report = two_runs
    page = tmp_path / "offline"  # a copy away from the store: it needs nothing beside it
    shutil.copytree(report, page)
    methods = tmp_path / "methods"
    shutil.copytree(methods_report[2], methods)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get((page / "report.html").as_uri())
        assert driver.title == "kisstore edit report"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        ds = xr.open_datatree(store, engine="zarr")["edits/large"].ds.load()
        worst = report_html.hurt_most(ds, n=1)[0]
        bars = driver.find_elements(By.CSS_SELECTOR, "svg.hurtmost rect.hurt")
        assert len(bars) >= 2
        tip = driver.find_element(By.ID, "tip")
        assert not tip.is_displayed()
        ActionChains(driver).move_to_element(bars[0]).perform()
        assert tip.is_displayed() and worst["text"] in tip.text and "nats" in tip.text
        # a point of the drift scatter names its fact too
        ActionChains(driver).move_to_element(driver.find_elements(By.CSS_SELECTOR, "svg.drift circle.fact")[0]).perform()
        assert "→" in tip.text and "drift" in tip.text
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400  # no sideways scroll
        png = driver.get_screenshot_as_png()
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # none after hovering either
        # the methods' report: the comparison chart, and a MEMIT layer's point names the layer and its fact
        driver.get((methods / "report.html").as_uri())
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg.compare polyline")) == 4
        tip = driver.find_element(By.ID, "tip")
        point = driver.find_elements(By.CSS_SELECTOR, "svg.layerdrift circle.fact")[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", point)
        ActionChains(driver).move_to_element(point).perform()
        assert tip.text.startswith("layer 0: ") and "→" in tip.text and "live" in tip.text, tip.text
        ActionChains(driver).move_to_element(driver.find_elements(By.CSS_SELECTOR, "svg.compare circle")[0]).perform()
        assert "facts edited" in tip.text
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
    finally:
        driver.quit()
    with Image.open(io.BytesIO(png)) as im:
        assert im.size[0] == 1400
        pixels = np.asarray(im.convert("RGB"))
    (tmp_path / "screenshot.png").write_bytes(png)
    # not blank: the charts' colours are on the page (the first run's blue lines, the red bars)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 50
    assert (np.abs(pixels.astype(int) - [31, 119, 180]).sum(axis=-1) < 30).sum() > 100
