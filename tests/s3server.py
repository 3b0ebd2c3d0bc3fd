"""A real S3 protocol server for tests: moto's ThreadedMotoServer on 127.0.0.1.

Use it with ``from tests.s3server import s3_server  # noqa: F401`` in a test module. The
server starts once per test process (port 0: the OS picks a free port); each test gets a
fresh bucket and AWS credentials in its environment (dummy values the server accepts
while authentication is off; ``S3Server.authenticated()`` turns checking on, so any key
is then unknown to it and refused like a wrong key on AWS).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

ACCESS_KEY = "AKIAKISSTORETESTKEY1"
SECRET_KEY = "kisstore-test-secret-from-the-environment"
_server = None
_endpoint: str | None = None
_requests: list = []  # every request the server answered (Request)


class Request(tuple):
    """One request the server answered: unpacks as (method, path with its query); ``range``
    is its Range header ('' when it asked for the whole object)."""

    range: str

    def __new__(cls, method: str, path: str, range_: str = ""):
        self = super().__new__(cls, (method, path))
        self.range = range_
        return self


def _counting(app):
    """WSGI middleware around moto's app: records every request before moto answers it, so a
    request is in the log by the time its client has the response (werkzeug's access log is
    written after the response, too late for a count taken right after a read)."""

    def counted(environ, start_response):
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        if "?" not in path and environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        _requests.append(Request(environ.get("REQUEST_METHOD", ""), path, environ.get("HTTP_RANGE", "")))
        return app(environ, start_response)

    return counted


def _start() -> str:
    global _server, _endpoint
    if _endpoint is None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from moto.server import ThreadedMotoServer
        from werkzeug.serving import make_server

        class CountingMotoServer(ThreadedMotoServer):
            def _server_entry(self) -> None:  # moto's own, with the app wrapped
                app = _counting(DomainDispatcherApplication(create_backend_app))
                self._server = make_server(self._ip_address, self._port, app, True,
                                           request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log on the test output
        _server = CountingMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        _server.start()
        host, port = _server.get_host_and_port()
        _endpoint = f"http://{host}:{port}"
    return _endpoint


def closed_port() -> int:
    """A local TCP port with nothing listening on it (an unreachable endpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str, secrets: tuple[str, ...] = ()) -> None:
    """Exit code 2, exactly one ``Error:`` line containing ``expected``, no traceback, no secret."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for secret in (*secrets, SECRET_KEY, ACCESS_KEY):
        assert secret not in proc.stderr + proc.stdout


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    def url(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    @property
    def options(self) -> dict[str, str]:
        """Storage options for kisstore.open_store / xarray / s3fs."""
        return {"endpoint_url": self.endpoint}

    @property
    def cli(self) -> list[str]:
        return ["--storage-option", f"endpoint_url={self.endpoint}"]

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, prefix: str = "", bucket: str | None = None) -> dict[str, bytes]:
        """Every object under ``prefix`` with its bytes."""
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket or self.bucket, Key=o["Key"])["Body"].read()
        return out

    @contextlib.contextmanager
    def requests(self) -> Iterator[list[Request]]:
        """Record every request the server answers inside the block, as (method, path) pairs
        (each with its ``range``), counted at the server (from every process and thread)."""
        start = len(_requests)
        seen: list[Request] = []
        try:
            yield seen
        finally:
            seen.extend(_requests[start:])

    @contextlib.contextmanager
    def authenticated(self) -> Iterator[None]:
        """Make the server check credentials: every key is unknown to it, so all are wrong."""
        import requests

        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        try:
            yield
        finally:
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


def s3_environment(monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Start (once) the server; set dummy AWS credentials; create a fresh bucket."""
    endpoint = _start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/kisstore-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/kisstore-test-aws-credentials")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    server = S3Server(endpoint, f"kis-{uuid.uuid4().hex[:12]}")
    server.create_bucket(server.bucket)
    return server


@pytest.fixture
def s3_server(monkeypatch) -> S3Server:
    """The shared moto server, a fresh bucket, and dummy AWS credentials in the environment."""
    return s3_environment(monkeypatch)
