"""Store URLs, storage options and secret redaction.

A store argument is a local path or an fsspec URL (``s3://bucket/key``, ``memory://x``).
Credentials come from the environment, the AWS config files or ``--storage-option``;
they are never written into a store, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kisstore.errors import InputError

_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<rest>.*)$")
_SECRET_KEYS = ("secret", "token", "password", "key", "credential", "session")
_SUPPORTED_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "memory", "http", "https")
_URL_CREDENTIALS_RE = re.compile(r"(://)[^/@\s:]+:[^/@\s]+@")
# secret values seen by parse_storage_options in this process: redact() removes them even
# where the caller has no storage options at hand (e.g. the CLI's error handler)
_SEEN_SECRETS: set[str] = set()


def split_url(url: str) -> tuple[str, str]:
    """Return (scheme, path); local paths have scheme ``file``."""
    if not isinstance(url, str) or not url.strip():
        raise InputError("store URL is empty")
    m = _URL_RE.match(url)
    if m is None:
        if "://" in url or url.startswith(":") or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", url):
            raise InputError(f"malformed store URL {url!r}")
        return "file", url
    scheme = m.group("scheme").lower()
    if scheme not in _SUPPORTED_SCHEMES:
        raise InputError(
            f"unsupported store URL scheme {scheme!r} in {redact(url)!r} "
            f"(supported: a local path, {', '.join(s + '://' for s in _SUPPORTED_SCHEMES)})"
        )
    rest = m.group("rest")
    if scheme != "file" and (not rest or rest.startswith("/")):
        raise InputError(f"malformed store URL {redact(url)!r}: no bucket or path after '{scheme}://'")
    if scheme == "s3" and "@" in rest.split("/", 1)[0]:
        raise InputError("store URLs must not embed credentials; use the AWS environment or --storage-option")
    return scheme, rest


def is_remote(url: str) -> bool:
    return split_url(url)[0] not in ("file",)


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs from the command line into fsspec storage options.

    ``endpoint_url`` is routed into ``client_kwargs`` as s3fs expects; ``true``/``false``
    and integers are converted.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError(f"bad --storage-option {pair.split('=')[0]!r}: expected key=value")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise InputError(f"bad --storage-option key {key!r}: expected a name like endpoint_url")
        out[key] = _coerce(value)
    _SEEN_SECRETS.update(secret_values(out, include_env=False))
    return out


def secret_values(storage_options: Mapping[str, Any] | None = None, *, include_env: bool = True) -> list[str]:
    """Every string that must never be shown: secret-looking options and AWS env values."""
    values: list[str] = []
    for k, v in (storage_options or {}).items():
        if isinstance(v, Mapping):
            values.extend(secret_values(v, include_env=False))
        elif isinstance(v, str) and any(s in k.lower() for s in _SECRET_KEYS) and len(v) >= 4:
            values.append(v)
    if not include_env:
        return values
    values.extend(_SEEN_SECRETS)
    for k, v in os.environ.items():
        if k.startswith(("AWS_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")) and any(
            s in k.lower() for s in _SECRET_KEYS
        ) and len(v) >= 4:
            values.append(v)
    return values


def redact(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Replace every known secret in ``text`` by ``***``."""
    for secret in sorted(set(secret_values(storage_options)), key=len, reverse=True):
        text = text.replace(secret, "***")
    # credentials embedded in URLs: scheme://user:pass@host
    return _URL_CREDENTIALS_RE.sub(r"\1***@", text)


def public_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Storage options safe to record (no credentials), for provenance."""
    safe: dict[str, Any] = {}
    for k, v in (storage_options or {}).items():
        if any(s in k.lower() for s in _SECRET_KEYS) or k == "profile":
            continue
        if isinstance(v, Mapping):
            v = public_options(v)
        elif isinstance(v, str):
            v = _URL_CREDENTIALS_RE.sub(r"\1***@", v)  # e.g. endpoint_url=http://user:pass@host
        safe[k] = v
    return safe


def normalize_s3_options(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Put ``endpoint_url``/``region_name`` where s3fs reads them.

    ``region`` is accepted for ``region_name``, ``access_key_id``/``secret_access_key``
    (the AWS names) for s3fs's ``key``/``secret``.
    """
    opts = dict(storage_options or {})
    for alias, name in (("region", "region_name"), ("access_key_id", "key"), ("aws_access_key_id", "key"),
                        ("secret_access_key", "secret"), ("aws_secret_access_key", "secret"),
                        ("session_token", "token"), ("aws_session_token", "token")):
        if alias in opts and name not in opts:
            opts[name] = opts.pop(alias)
    ck = dict(opts.pop("client_kwargs", {}) or {})
    for name in ("endpoint_url", "region_name"):
        if name in opts:
            ck[name] = opts.pop(name)
    if ck:
        opts["client_kwargs"] = ck
    return opts
