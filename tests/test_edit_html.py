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
def test_report_in_a_real_browser_has_no_errors_tooltips_and_fits_1400px(two_runs, tmp_path):
    pytest.importorskip("selenium")
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    store, report = two_runs
    page = tmp_path / "offline"  # a copy away from the store: it needs nothing beside it
    shutil.copytree(report, page)
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
