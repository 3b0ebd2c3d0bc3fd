"""Options and error handling shared by every command."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from kisstore.errors import InputError, KisstoreError
from kisstore.store.urls import parse_storage_options, redact

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?i?[bB]?)\s*$")
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """'24GB', '512MiB', '1.5GB', '4096' → bytes."""
    m = SIZE_RE.match(text or "")
    if not m:
        raise InputError(f"bad size {text!r}: expected e.g. 16GB or 512MiB")
    unit = m.group(2).lower().rstrip("b")
    if unit not in _UNITS:
        raise InputError(f"bad size unit in {text!r}")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"bad size {text!r}: must be positive")
    return value


def storage_option(f: Callable) -> Callable:
    return click.option(
        "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
        help="fsspec storage option for remote stores (endpoint_url=…, anon=true, profile=…); repeatable.",
    )(f)


def scheduler_option(f: Callable) -> Callable:
    return click.option(
        "--scheduler", default=None, metavar="ADDR",
        help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS, else local threads).",
    )(f)


def storage_options_from(pairs: tuple[str, ...]) -> dict[str, Any]:
    return parse_storage_options(pairs)


_STORAGE_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionClosedError",
                   "NoCredentialsError", "PartialCredentialsError", "ServerDisconnectedError", "ReadTimeoutError")


def _looks_like_storage(e: BaseException) -> bool:
    """Storage-layer failures that escaped the library's own translation (raised deep in fsspec/zarr)."""
    chain = [e, e.__cause__, e.__context__]
    return any(type(x).__name__ in _STORAGE_ERRORS for x in chain if x is not None)


def _disk_full(e: BaseException) -> str | None:
    """'No space left on device' (or over quota) anywhere in the exception's chain, as one line."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({x.filename})" if x.filename else ""
            return f"{os.strerror(x.errno)}{where}"
        stack += [x.__cause__, x.__context__]
    return None


def _looks_corrupt(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    return "checksum" in text or "decompression" in text or "zstd" in text or "corrupt" in text


def output_dir(path: str | None, flag: str) -> None:
    """Create ``path`` (a --report folder) now, so an unwritable one fails before any work."""
    if path is None:
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".kisstore-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise InputError(f"{flag} {path}: cannot write there ({e.strerror or type(e).__name__})") from None


def output_prefix(prefix: str | None, flag: str) -> None:
    """The folder of a --table-out PREFIX must exist and be writable."""
    if prefix is None:
        return
    output_dir(os.path.dirname(os.path.abspath(prefix)), flag)


def store_argument(f: Callable) -> Callable:
    """STORE as the positional argument or as ``--store URL`` (as extract takes it): exactly one.

    The command receives it as ``store``; both or neither is a one-line error, exit code 2."""

    @functools.wraps(f)
    def wrapper(*args, store_pos: str | None = None, store_opt: str | None = None, **kwargs):
        if store_pos is not None and store_opt is not None:
            if store_pos == store_opt:
                store_pos = None
            else:
                click.echo(f"Error: two stores given ({store_pos} and --store {store_opt}); give one", err=True)
                sys.exit(2)
        store = store_opt if store_opt is not None else store_pos
        if store is None:
            click.echo("Error: no store given: pass STORE or --store URL", err=True)
            sys.exit(2)
        return f(*args, store=store, **kwargs)

    wrapper = click.option("--store", "store_opt", default=None, metavar="URL",
                           help="The store (path or fsspec URL), instead of the positional STORE.")(wrapper)
    return click.argument("store_pos", metavar="STORE", required=False)(wrapper)


def handle_errors(f: Callable) -> Callable:
    """Turn library errors into one-line messages and exit codes; tracebacks only with --debug."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug")) or os.environ.get("KISSTORE_DEBUG") == "1"
        # fsspec's event loop runs aiohttp tasks in a thread; when a storage endpoint dies
        # mid-write, tasks whose failure already reached us as an exception are collected later
        # (often at exit, after this wrapper) and asyncio logs each with a traceback ("Task
        # exception was never retrieved"). The one-line error below says what happened, so the
        # asyncio logger is quiet for the rest of the process unless --debug asks for everything.
        logging.getLogger("asyncio").setLevel(logging.NOTSET if debug else logging.CRITICAL)
        try:
            return f(*args, **kwargs)
        except KisstoreError as e:
            if debug:
                raise
            click.echo(f"Error: {redact(str(e))}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted; rerun the same command to resume.", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `kisstore info STORE | head`: the reader left
            # no traceback and no "Error:" line, but not success either: the command stopped where
            # its output was cut (128 + SIGPIPE, what a shell reports for a killed writer)
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - interpreter exit flushes into it
            sys.exit(141)
        except click.exceptions.ClickException:
            raise
        except Exception as e:  # an unexpected failure: still one line unless --debug
            if debug:
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            if full := _disk_full(e):
                # a full disk met outside the store's own error translation (e.g. analyze's Dask writes)
                click.echo(f"Error: {redact(full)}; free some space and rerun", err=True)
                sys.exit(2)
            if _looks_like_storage(e):
                from kisstore.store.io import _describe

                click.echo(f"Error: storage: {redact(_describe(e))}", err=True)
                sys.exit(2)
            if _looks_corrupt(e):
                click.echo(f"Error: corrupt data in the store ({redact(first)}); `kisstore info --verify STORE` "
                           "names the damaged arrays and chunks", err=True)
                sys.exit(2)
            click.echo(f"Error: {type(e).__name__}: {redact(first)} (rerun with --debug for the traceback)", err=True)
            sys.exit(1)

    return wrapper
