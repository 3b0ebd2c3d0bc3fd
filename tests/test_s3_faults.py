"""The S3 server stops in the middle of an extraction: a clear error, then a rerun loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from tests import tiny
from tests.conftest import run_cli
from tests.s3server import ACCESS_KEY, SECRET_KEY, closed_port


@pytest.fixture
def restartable_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = closed_port()
    state = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)}
    state["server"].start()
    for k, v in {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(k, v)

    def restart():
        state["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        state["server"].start()

    yield f"http://127.0.0.1:{port}", state, restart
    state["server"].stop()


def test_server_stopped_mid_write_then_rerun_completes(restartable_server, tiny_models, tiny_items, tmp_path):
    import boto3

    endpoint, state, restart = restartable_server
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="faults")
    corpus = tiny.corpus_file(tmp_path / "corpus.txt", n_docs=800)
    args = ["extract", "--model", str(tiny_models["llama"]), "--items", str(tiny_items), "--corpus", str(corpus),
            "--checkpoint-every", "0", "--batch-tokens", "1024", "--quiet"]
    s3_args = [*args, "--store", "s3://faults/s.zarr", "--storage-option", f"endpoint_url={endpoint}"]
    proc = subprocess.Popen([sys.executable, "-m", "kisstore_cli.main", *s3_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for a committed checkpoint of the corpus pass
        try:
            meta = json.loads(s3.get_object(Bucket="faults", Key="s.zarr/_checkpoints/llama/zarr.json")["Body"].read())
            if meta["attributes"].get("state", {}).get("docs", 0) > 0:
                break
        except s3.exceptions.NoSuchKey:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    state["server"].stop()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "cannot reach the storage endpoint" in err and "Traceback" not in err
    assert SECRET_KEY not in out + err
    restart()
    resumed = run_cli(*s3_args, check=True)
    assert "resuming corpus pass" in resumed.stdout
    local = tmp_path / "local.zarr"
    run_cli(*args, "--store", str(local), check=True)
    got = xr.open_datatree("s3://faults/s.zarr", engine="zarr",
                           storage_options={"client_kwargs": {"endpoint_url": endpoint}})["models/llama"].ds
    ref = xr.open_datatree(local, engine="zarr")["models/llama"].ds
    np.testing.assert_array_equal(got["cov"].values, ref["cov"].values)
    np.testing.assert_array_equal(got["key"].values, ref["key"].values)
    assert got.attrs["complete"] is True
