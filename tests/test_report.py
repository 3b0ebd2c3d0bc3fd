"""The HTML + PNG report: files present, self-contained, and rendering in a real browser."""

import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kisstore.analysis.synthetic import write_synthetic_store
from kisstore_cli.main import cli

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
         "--disable-sync --no-first-run").split()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("r")
    path = str(tmp / "store.zarr")
    write_synthetic_store(path, {"small": {"n_layers": 3, "d_ff": 10, "n_params": 10_000},
                                 "large": {"n_layers": 4, "d_ff": 14, "n_params": 90_000}}, n_items=20)
    out = tmp / "report"
    r = CliRunner().invoke(cli, ["analyze", path, "--report", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_report_folder_holds_html_pngs_and_scaling_table(report):
    names = {p.name for p in report.iterdir()}
    assert "index.html" in names and {"scaling.csv", "scaling.parquet"} <= names
    for stem in ("kurtosis_by_layer", "scaling_depth", "scaling_params", "p_matrix_small_layer0",
                 "kde_large_layer0", "angles_small_layer0", "convergence_large"):
        png = report / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem


def test_report_html_is_self_contained(report):
    text = (report / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", text)
    assert not re.search(r"<link[^>]*\bhref=\"https?://", text)
    for title in ("P matrix per layer", "KDE", "whitened vs activation angles", "convergence", "top pairs",
                  "kurtosis vs relative depth", "mean kurtosis vs parameters"):
        assert title in text, title


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)), reason="no Debian chromium")
def test_report_renders_in_headless_chromium_without_errors(report):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        driver.get(Path(report / "index.html").resolve().as_uri())
        deadline = time.time() + 30
        while time.time() < deadline and not driver.execute_script(
                "return !!(window.Bokeh && Bokeh.documents && Bokeh.documents.length)"):
            time.sleep(0.2)
        time.sleep(1.0)
        n_roots = driver.execute_script("return Bokeh.documents[0].roots().length")
        # switch the first layer selector: the JS callback must run without errors
        driver.execute_script("""
            const doc = Bokeh.documents[0];
            const sel = [...doc.all_models].find(m => m.type === 'Select' || m.constructor.name === 'Select');
            sel.value = sel.options[sel.options.length - 1];""")
        time.sleep(0.5)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert n_roots >= 1
    assert errors == []
