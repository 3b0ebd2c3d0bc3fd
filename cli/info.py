"""``kisstore info``."""

from __future__ import annotations

import json

import click

from kisstore_cli.common import handle_errors, storage_option, storage_options_from, store_argument

_SKIP = {"complete", "versions", "storage_options", "layers"}


@click.command()
@store_argument
@click.option("--verify", is_flag=True, help="Read every chunk and check its checksum.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@storage_option
@handle_errors
def info(store, verify, as_json, storage_options):
    """Show a store's tree, shapes, provenance and completeness."""
    from kisstore.errors import StoreError
    from kisstore.store.inspect import describe, require
    from kisstore.store.inspect import verify as verify_store
    from kisstore.store.io import Store

    s = Store(store, storage_options_from(storage_options), read_only=True)
    require(s)
    summary = describe(s)
    if verify:
        summary["problems"] = verify_store(s)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print(summary)
    if verify and summary["problems"]:
        n_meta = sum(" metadata: " in p for p in summary["problems"])
        n_chunks = len(summary["problems"]) - n_meta
        what = [f"{n_chunks} corrupt chunk(s)"] if n_chunks else []
        what += [f"{n_meta} node(s) with damaged metadata"] if n_meta else []
        raise StoreError(f"{' and '.join(what)} in {store}")


def _print(s: dict) -> None:
    a = s["attrs"]
    click.echo(f"{s['url']}  (kisstore schema {a.get('kisstore_schema_version')}, written by "
               f"kisstore {a.get('kisstore_version')})")
    if s["items"]:
        it = s["items"]
        click.echo(f"/items  {it['n']} items from {it.get('source', '?')}  selection={it.get('selection')}")
    for name, m in s["models"].items():
        click.echo(f"/models/{name}  [{m['status']}]")
        for arr, spec in m["arrays"].items():
            click.echo(f"    {arr:<10} {str(tuple(spec['shape'])):<22} {spec['dtype']}")
        for k, v in m["provenance"].items():
            if k not in _SKIP:
                click.echo(f"    {k}: {v}")
        if "versions" in m["provenance"]:
            click.echo(f"    versions: {m['provenance']['versions']}")
    for name, an in s.get("analyses", {}).items():
        path = an["path"]
        click.echo(f"{path}  analysis {name!r}: {_settings(an['settings'])}")
        for m, g in an["models"].items():
            click.echo(f"{path}/{m}  layers {_layers(g['layers'])}, {g['n_items']} items ({g['items']}), "
                       f"ridge {g['ridge']}")
        if an["scaling_rows"] is not None:
            click.echo(f"{path}/scaling  scaling table, {an['scaling_rows']} rows")
    for name, e in s.get("edits", {}).items():
        where = f"layers {_layers(e['layers'])}" if e.get("layers") else f"layer {e['layer']}"
        batches = f" (batches of {e['batch']})" if e.get("batch") else ""
        click.echo(f"/edits/{name}  [{'complete' if e['complete'] else 'incomplete'}] {e['method']} on "
                   f"{e['model']} {where}, {e['edits']} edits in {e['steps']} steps{batches}, {e['tracked']} tracked")
    for name, c in s.get("edits_in_progress", {}).items():
        at = "no complete checkpoint yet" if c["step"] is None else \
            f"checkpoint after step {c['step']}, {c['seconds_since_checkpoint']} s ago"
        click.echo(f"/edits/{name}  [edit {c['status']}] {at}; the same `kisstore edit` command resumes it")
    for name, p in s["in_progress"].items():
        click.echo(f"/_checkpoints/{name}  [{p['status']}] items done: {p['items_done']}, layers done: "
                   f"{p['layers_done']}, last checkpoint {p['seconds_since_checkpoint']} s ago")
    if "problems" in s:
        if s["problems"]:
            for p in s["problems"]:
                click.echo(f"CORRUPT {p}")
        else:
            click.echo("verify: every node's metadata matches its consolidated copy; every chunk read back "
                       "with a valid checksum (and at its place in the manifest, where the store has one)")


def _settings(settings: dict | None) -> str:
    """``items known, n_items 128, ridge 0.0, top_k 20, …`` (None: the default)."""
    if not settings:
        return "no settings recorded"
    parts = []
    for key, value in settings.items():
        if isinstance(value, list) and len(value) > 6:
            value = f"[{len(value)} values]"
        parts.append(f"{key} {'default' if value is None else value}")
    return ", ".join(parts)


def _layers(layers: list | None) -> str:
    """0-11 for a contiguous run, else the list (short)."""
    if not layers:
        return "?"
    if layers == list(range(layers[0], layers[0] + len(layers))) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]} ({len(layers)})"
    return ",".join(str(v) for v in layers)


COMMANDS = [info]
