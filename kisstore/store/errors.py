"""Storage failures as one-line errors: the translation of what local disks, S3 (botocore,
aiohttp) and other fsspec filesystems raise into kisstore's StoreError, with secrets removed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from kisstore.errors import InputError, StoreError
from kisstore.store.urls import redact, split_url


@contextlib.contextmanager
def storage_errors(url: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Translate storage-layer exceptions into one-line StoreErrors with secrets removed."""
    try:
        yield
    except (StoreError, InputError):
        raise
    except PermissionError as e:
        if split_url(url)[0] == "file":
            raise StoreError(redact(f"cannot write to store {url}: permission denied", storage_options)) from e
        raise StoreError(redact(f"store {url}: {describe(e, storage_options)}", storage_options)) from e
    except FileNotFoundError as e:
        if _is_missing_bucket(e):
            raise missing_bucket_error(url) from e
        raise StoreError(redact(f"store {url}: not found ({e})", storage_options)) from e
    except OSError as e:
        raise StoreError(redact(f"store {url}: {describe(e, storage_options)}", storage_options)) from e
    except Exception as e:  # botocore / aiohttp errors have no common base
        name = type(e).__name__
        if any(s in name for s in ("Credential", "ClientError", "Endpoint", "Connect", "NoSuchBucket", "AccessDenied")):
            raise StoreError(redact(f"store {url}: {describe(e, storage_options)}", storage_options)) from e
        raise


_CREDENTIAL_HINTS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "Unable to locate credentials",
                     "Access Key Id you provided", "signature we calculated", "NoCredentials",
                     "ExpiredToken", "security token included in the request is invalid", "InvalidToken")
_CREDENTIAL_ADVICE = "check the credentials (--storage-option key=…/secret=…/profile=… or the AWS_* environment)"


def describe(e: BaseException, storage_options: Mapping[str, Any] | None = None) -> str:
    """One line that says what failed (credentials, permissions, a missing bucket, an unreachable endpoint)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Partial credentials" in text or "PartialCredentials" in type(e).__name__:
        return "incomplete credentials: give both key=… and secret=… (or neither, to use the AWS environment)"
    if any(h in text for h in _CREDENTIAL_HINTS) or "Credential" in type(e).__name__:
        return f"access denied: {_CREDENTIAL_ADVICE}"
    if isinstance(e, PermissionError) or "AccessDenied" in text or text in ("Forbidden", "Access Denied"):
        return f"access denied: {_CREDENTIAL_ADVICE} and the bucket's permissions"
    if _is_missing_bucket(e):
        return "bucket does not exist"
    if "Could not connect" in text or "Cannot connect" in text or "Connect" in type(e).__name__:
        endpoint = _endpoint(storage_options)
        return "cannot reach the storage endpoint" + (f" {endpoint}" if endpoint else "")
    return text


def _is_missing_bucket(e: BaseException) -> bool:
    text = str(e)
    return "NoSuchBucket" in text or "bucket does not exist" in text.lower() or "NoSuchBucket" in type(e).__name__


def _endpoint(storage_options: Mapping[str, Any] | None) -> str | None:
    opts = dict(storage_options or {})
    return opts.get("endpoint_url") or dict(opts.get("client_kwargs") or {}).get("endpoint_url")


def missing_bucket_error(url: str) -> StoreError:
    """The one-line error for an S3 URL whose bucket does not exist."""
    bucket = split_url(url)[1].split("/", 1)[0]
    return StoreError(f"store {redact(url)}: bucket {bucket!r} does not exist "
                      f"(create it first, e.g. `aws s3 mb s3://{bucket}`)")
