"""``kisstore analyze``: derive P matrices, whitened geometry and statistics into the store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from kisstore_cli.common import (
    handle_errors,
    output_dir,
    output_prefix,
    scheduler_option,
    storage_option,
    storage_options_from,
    store_argument,
)


@click.command("analyze")
@store_argument
@click.option("--model", "models", multiple=True, metavar="M",
              help="Model group under /models to analyse (repeatable; default: every complete model).")
@click.option("--items", type=click.Choice(["all", "known", "intersect"]), default="all", show_default=True,
              help="Items: all, those the model knows, or those every model in the store knows (the paper's choice).")
@click.option("--n-items", type=int, default=None, metavar="N", help="Keep the first N items of the subset.")
@click.option("--layers", default=None, metavar="SPEC", help="Layers: all, 5, -1, 0-5, 0,3,7, 0-29:2 (default all).")
@click.option("--ridge", type=float, default=0.0, show_default=True, metavar="λ",
              help="Add λ·mean(diag C) to C's diagonal before whitening (for ill-conditioned C).")
@click.option("--top-k", type=int, default=20, show_default=True, metavar="K",
              help="Keep the K strongest pairs per layer (see --rank) with both facts' text, and the K most "
                   "exposed facts.")
@click.option("--rank", "rank_by", default="abs", show_default=True, metavar="abs|signed",
              help="Rank the top pairs by |P| (both signs kept) or by signed P.")
@click.option("--exclude-same-subject", is_flag=True, help="Leave pairs of facts that share a subject out of the rankings.")
@click.option("--exclude-same-token", is_flag=True,
              help="Leave pairs whose keys sit on the same token id out of the rankings (statistics are stored "
                   "both with and without them either way).")
@click.option("--bootstrap", "n_boot", type=int, default=200, show_default=True, metavar="N",
              help="Bootstrap replicates over items for the statistics' 95 % intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, metavar="S", help="Seed of the bootstrap's draws.")
@click.option("--name", default=None, metavar="NAME",
              help="Write the analysis NAME (/analyses/NAME/<model>) beside the others; default: the "
                   "default analysis (/analysis/<model>). A run into an analysis with the same settings "
                   "merges its layers into it.")
@click.option("--replace", is_flag=True,
              help="Replace the analysis (all its models and layers) even when its settings differ.")
@click.option("--compare", "compare_name", default=None, metavar="NAME",
              help="With --report: show the stored analysis NAME ('default' for /analysis) beside this one.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write a self-contained HTML report, PNG figures and the scaling table to DIR.")
@click.option("--report-layers", default=None, metavar="SPEC",
              help="Layers whose per-layer report figures are drawn (--layers syntax; default first, middle, last).")
@click.option("--dpi", type=click.IntRange(20, 1200), default=200, show_default=True, metavar="DPI",
              help="Resolution of the report's PNG figures.")
@click.option("--table-out", default=None, metavar="PREFIX",
              help="Also write the scaling table to PREFIX.csv and PREFIX.parquet.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@scheduler_option
@storage_option
@handle_errors
def analyze_command(store: str, models: tuple[str, ...], items: str, n_items: int | None, layers: str | None,
                    ridge: float, top_k: int, rank_by: str, exclude_same_subject: bool, exclude_same_token: bool,
                    n_boot: int, seed: int, name: str | None, replace: bool, compare_name: str | None,
                    report_dir: str | None, report_layers: str | None, dpi: int,
                    table_out: str | None, quiet: bool,
                    scheduler: str | None, storage_options: tuple[str, ...]) -> None:
    """Derive gram, P, whitened/activation cosines, statistics (with bootstrap intervals, per
    pair set), KDEs, convergence, top pairs and per-fact summaries for every model and layer of
    STORE, and write them to /analysis/<model> (or, with --name NAME, /analyses/NAME/<model>)."""
    from kisstore.analysis import analyze, export_table, scaling_table
    from kisstore.analysis.cluster import dask_client
    from kisstore.analysis.core import sample_size_warnings
    from kisstore.analysis.persist import read_analysis, read_scaling, stored_models, write_analysis
    from kisstore.analysis.subsets import model_dataset, select_models
    from kisstore.errors import InputError
    from kisstore.limits import check_ridge
    from kisstore.store import Store, integrity, layout, open_store
    from kisstore.store.commit import ANALYSIS_LEASE, lease, recover
    from kisstore.store.urls import split_url

    check_ridge(ridge)  # before any work: --ridge inf read as "the stored C is damaged"
    from kisstore.analysis.rankings import RankingOptions, check_options

    check_options(RankingOptions(top_k=top_k, rank_by=rank_by, n_boot=n_boot, seed=seed))
    root = layout.analysis_root(name)  # a bad --name (or --compare) is refused before any work
    if compare_name is not None:
        layout.analysis_root(compare_name)
        if not report_dir:
            raise InputError("--compare NAME shows a second analysis in the report: give --report DIR too")
    if split_url(store)[0] == "file" and not store.startswith("file://"):
        store = os.path.abspath(store)  # Dask workers may run in another directory
    opts = storage_options_from(storage_options)
    handle = Store(store, opts)
    handle.validate()
    handle.check_links()  # a link inside the store (a linked analysis/) is refused before any work
    recover(handle)  # a write that a kill interrupted is completed before anything is read
    if report_layers is not None and not report_dir:
        raise InputError("--report-layers needs --report DIR (it picks the report's per-layer figures)")
    if compare_name is not None and not stored_models(handle, compare_name):
        raise InputError(f"--compare {compare_name}: the store has no such analysis (`kisstore info` lists them)")
    output_dir(report_dir, "--report")  # an unwritable destination fails before the work, not after
    output_prefix(table_out, "--table-out")
    start = time.perf_counter()
    with dask_client(scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS"), echo=click.echo):
        tree = open_store(store, opts)
        # metadata as consolidated, every chunk present and in its place: a missing chunk would
        # read as its fill value (empty fact texts, zero token counts) and a swapped one as data
        # (after the layout checks: arrays of the wrong type or dims are refused as such first)
        chosen = select_models(tree, list(models) or None)
        if compare_name is not None and not set(chosen) & set(stored_models(handle, compare_name)):
            raise InputError(f"--compare {compare_name}: that analysis holds none of the models analysed now "
                             f"({', '.join(chosen)})")
        for m in chosen:
            model_dataset(tree, m)
        integrity.check_for_reading(handle, [layout.ITEMS, *(layout.model_path(m) for m in chosen)])
        for line in sample_size_warnings(tree, list(models) or None):
            click.echo(line, err=True)
        result = analyze(tree, models=list(models) or None, items=items, n_items=n_items, layers=layers,
                         ridge=ridge, top_k=top_k, rank_by=rank_by, exclude_same_subject=exclude_same_subject,
                         exclude_same_token=exclude_same_token, n_boot=n_boot, seed=seed)
        if report_dir:  # a bad --report-layers fails before the work, not after it
            from kisstore.analysis.report_data import report_layers as check_report_layers

            for m in result[layout.ANALYSIS].children:
                if m != "scaling":
                    check_report_layers(result[f"{layout.ANALYSIS}/{m}"].to_dataset(), report_layers, m)
        # one analysis of a store at a time
        with lease(handle, ANALYSIS_LEASE, wait_s=0), _progress_bar(enabled=not quiet):
            stored = write_analysis(handle, result, progress=click.echo, name=name, replace=replace)
        table = scaling_table(read_scaling(handle, name))
    click.echo(f"analysed {len(stored)} model(s) in {time.perf_counter() - start:.1f} s; "
               f"scaling table: {len(table)} rows → /{root}/scaling")
    if table_out:
        for path in export_table(table, table_out):
            click.echo(f"wrote {path}")
    if report_dir:
        from kisstore.analysis.report import build_report

        click.echo(f"building report in {report_dir} …")
        extra = {}
        if compare_name is not None:  # the second analysis' datasets of the models it shares with this one
            shared = [m for m in stored if m in stored_models(handle, compare_name)]
            extra = {"compare": {m: read_analysis(handle, m, compare_name) for m in shared},
                     "compare_name": compare_name}
        paths = build_report(stored, table, Path(report_dir), progress=click.echo, layers=report_layers, dpi=dpi,
                             items=open_store(store, opts)[layout.ITEMS].to_dataset(), **extra)
        click.echo(f"wrote {paths[0]} and {len(paths) - 1} more file(s)")


def _progress_bar(enabled: bool):
    """A tqdm bar over the Dask tasks of each model's pass (and of the scaling table), on stderr.

    Local threads only (a --scheduler cluster has its own dashboard). On a terminal it redraws
    every 0.5 s; into a file or pipe every 10 s, so a log gets a few frames and each pass's
    final 100 % rather than thousands of carriage returns."""
    import contextlib
    import sys

    import dask
    import dask.threaded

    if not enabled or dask.base.get_scheduler() not in (None, dask.threaded.get):
        return contextlib.nullcontext()
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    class _Bar(Callback):
        def _start_state(self, dsk, state):
            n = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
            self._bar = tqdm(total=n, desc="analyze", unit="task", file=sys.stderr, leave=True,
                             mininterval=0.5 if sys.stderr.isatty() else 10.0)

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            if not errored:
                self._bar.refresh()  # tqdm draws at most every mininterval: show the finished state
            self._bar.close()

    return _Bar()


COMMANDS = [analyze_command]
