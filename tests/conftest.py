from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {arch: tiny.make_model(base / arch, arch) for arch in tiny.ARCHS}


@pytest.fixture(scope="session")
def tiny_items(tmp_path_factory) -> Path:
    return tiny.items_file(tmp_path_factory.mktemp("items") / "items.json")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return tiny.corpus_file(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``kisstore`` command line in a subprocess."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "kisstore_cli.main", *args], capture_output=True, text=True,
                          env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"kisstore {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_store(tiny_models, tiny_items, tiny_corpus, tmp_path_factory):
    """``tiny_store(arch)``: a complete store with that tiny model extracted from the tiny items
    and corpus, made once per session and shared by every module that needs one. Tests read it
    or copy it (``copy_store``) before they change anything."""
    made: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in made:
            path = tmp_path_factory.mktemp(f"tiny-store-{arch}") / "s.zarr"
            run_cli("extract", "--model", str(tiny_models[arch]), "--store", str(path), "--items", str(tiny_items),
                    "--corpus", str(tiny_corpus), "--quiet", check=True)
            made[arch] = path
        return made[arch]

    return get


def copy_store(template: Path, folder: Path) -> Path:
    """A copy of the store ``template`` at ``folder/s.zarr``, for a test to change."""
    import shutil

    dst = Path(folder) / "s.zarr"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, dst)
    return dst


def small_tmpfs(tmp_path: Path, size: str):
    """Yield a tmpfs of ``size`` mounted under ``tmp_path`` (a disk that fills up); skip without root."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def tree_digest(path: Path) -> str:
    """Hash of every file's relative path and bytes under ``path`` (to prove a store unchanged)."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
