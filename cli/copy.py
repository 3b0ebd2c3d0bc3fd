"""``kisstore copy``."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors, storage_option, storage_options_from


@click.command("copy")
@click.argument("src")
@click.argument("dst")
@storage_option
@click.option("--src-option", "src_options", multiple=True, metavar="KEY=VALUE",
              help="Storage option for SRC only (overrides --storage-option); repeatable.")
@click.option("--dst-option", "dst_options", multiple=True, metavar="KEY=VALUE",
              help="Storage option for DST only (overrides --storage-option); repeatable.")
@click.option("--overwrite", is_flag=True, help="Replace a DST that holds a different store (or other objects).")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Keys transferred in parallel.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handle_errors
def copy_cmd(src, dst, storage_options, src_options, dst_options, overwrite, workers, quiet):
    """Copy a whole store from SRC to DST (local path or s3://…), resumable and verified.

    Keys already at DST with identical bytes are not sent again, so rerunning an interrupted
    copy resumes it. Every chunk's crc32c is checked on the bytes read from SRC and the bytes
    stored at DST are compared with SRC's MD5. DST is seen as a store only once the copy is
    complete (its root zarr.json is written last).

    \b
    Example:
      kisstore copy demo.zarr s3://my-bucket/stores/demo.zarr
      kisstore copy s3://a/demo.zarr s3://b/demo.zarr --dst-option endpoint_url=http://minio:9000
    """
    from kisstore.store.copy import copy_store
    from kisstore.store.urls import redact

    common = storage_options_from(storage_options)
    report = copy_store(
        src, dst, src_options={**common, **storage_options_from(src_options)},
        dst_options={**common, **storage_options_from(dst_options)}, overwrite=overwrite,
        progress=not quiet, workers=workers,
    )
    if report.copied == 0 and report.deleted == 0 and not report.resumed:
        click.echo(f"{redact(dst)} already holds an identical copy of {redact(src)} ({report.keys} keys checked)")
    else:
        verb = "resumed" if report.resumed else "copied"
        click.echo(f"{verb} {redact(src)} → {redact(dst)}: {report.summary()}")


COMMANDS = [copy_cmd]
