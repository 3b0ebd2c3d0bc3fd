"""The import arrows of docs/ARCHITECTURE.md, checked by import-linter (contracts in pyproject.toml).

CI runs them through this test: a broken arrow fails it with the contract's name and the import
chain that breaks it. A copy of the sources with one forbidden import added shows the check bites.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the tree at ``root`` (``kisstore/``, ``cli/`` as ``kisstore_cli``)."""
    shim = root / ".contracts-shim"
    shim.mkdir(exist_ok=True)
    link = shim / "kisstore_cli"
    if not link.exists():
        link.symlink_to(root / "cli", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(shim)])}
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    return subprocess.run([*command, "--no-cache", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _contracts() -> list[str]:
    return [c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]]


def test_the_four_arrows_are_contracts():
    names = _contracts()
    assert len(names) == 4
    for arrow in ("cli → library", "library ↛ cli", "analysis ↛ models/torch/transformers",
                  "store ↛ extract/analysis/edit"):
        assert any(n.startswith(arrow) for n in names), (arrow, names)


def test_every_import_contract_is_kept(tmp_path):
    proc = _lint(_copy(tmp_path))
    broken = [line for line in proc.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert proc.returncode == 0, "import arrows broken: " + "; ".join(broken) + "\n" + proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(_contracts())} kept, 0 broken" in proc.stdout, proc.stdout


def test_a_forbidden_import_is_reported_with_its_arrow(tmp_path):
    """store → analysis, added to a copy of the sources, breaks exactly the store contract."""
    root = _copy(tmp_path)
    (root / "kisstore" / "store" / "_contract_probe.py").write_text("from kisstore.analysis import persist  # noqa: F401\n")
    proc = _lint(root)
    assert proc.returncode != 0
    broken = [line for line in proc.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert len(broken) == 1 and "store ↛ extract/analysis/edit" in broken[0], proc.stdout
    assert "kisstore.store._contract_probe -> kisstore.analysis.persist" in proc.stdout, proc.stdout


def _copy(tmp_path: Path) -> Path:
    """The package sources and pyproject.toml, copied (no caches) to analyse apart from the checkout."""
    root = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("kisstore", "cli", "schemas"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, root / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root
