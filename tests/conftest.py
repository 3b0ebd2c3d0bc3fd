from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from tests import tiny

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[2] / "shared"
_BASE_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # before any test changes it


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


class _ForkServer:
    """tests/cli_server.py, started on the first ``run_cli`` and kept for the session."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = dict(_BASE_ENV)
        self.lock = threading.Lock()

    def start(self) -> None:
        read_fd, write_fd = os.pipe()
        self.env = dict(_BASE_ENV)
        root = Path(__file__).resolve().parents[1]
        self.log = tempfile.NamedTemporaryFile(prefix="kisstore-cli-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.cli_server", str(write_fd)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=self.log, pass_fds=(write_fd,), text=True,
                                     cwd=root, env=self.env)
        os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r")

    def usable(self, env: dict[str, str]) -> bool:
        """Whether a command with this environment may run in a fork of the server: not when it
        changes a variable that a library reads as it is imported."""
        from tests.cli_server import IMPORT_TIME_ENV

        changed = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)}
        return not any(k.startswith(IMPORT_TIME_ENV) for k in changed)

    def run(self, args: tuple[str, ...], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory(prefix="kisstore-cli-") as d:
            if self.proc is None or self.proc.poll() is not None:
                self.start()
            out, err = Path(d) / "stdout", Path(d) / "stderr"
            self.proc.stdin.write(json.dumps({"argv": list(args), "env": env, "cwd": os.getcwd(), "stdout": str(out),
                                              "stderr": str(err), "timeout": timeout}) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
            if not line:
                raise RuntimeError(f"the test suite's CLI fork server died; its log: {self.log.name}")
            rc = json.loads(line)["rc"]
            return subprocess.CompletedProcess(["kisstore", *args], rc, out.read_text(), err.read_text())


_SERVER = _ForkServer()


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``kisstore`` command line in a separate process: a fork of the suite's CLI
    server (tests/cli_server.py), or a fresh interpreter when ``env`` changes a variable read at
    import time or ``KISSTORE_TEST_SUBPROCESS=1`` asks for one."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if os.environ.get("KISSTORE_TEST_SUBPROCESS") != "1" and hasattr(os, "fork") and _SERVER.usable(full_env):
        proc = _SERVER.run(args, full_env, timeout=600)
    else:
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
