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
