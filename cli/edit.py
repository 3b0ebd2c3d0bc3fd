"""``kisstore edit``: sequential closed-form edits with predicted vs measured interference."""

from __future__ import annotations

from pathlib import Path

import click

from kisstore_cli.common import (
    handle_errors,
    output_dir,
    storage_option,
    storage_options_from,
    store_argument,
)


@click.command("edit")
@store_argument
@click.option("--model", required=True, metavar="M",
              help="Model in the store: its group name or what was passed to extract (alias, Hub id, path).")
@click.option("--layer", type=int, default=None, metavar="L",
              help="Layer whose MLP down-projection is edited (-1 = last); rome/direct need it.")
@click.option("--layers", "layer_spec", default=None, metavar="SPEC",
              help="memit/alphaedit: the layer range the edit is spread over (3-8, 0,2,4; the last is MEMIT's "
                   "target layer) [default: --layer alone].")
@click.option("--batch", type=int, default=1, show_default=True, metavar="B",
              help="memit/alphaedit: facts edited together in one step.")
@click.option("--target", type=str, default="rome", show_default=True,
              help="memit/alphaedit: the target hidden state z: rome (ROME's optimisation of δ at the last "
                   "layer) or direct.")
@click.option("--mom2-update-weight", type=float, default=15000.0, show_default=True, metavar="λ",
              help="memit: MEMIT's weight on C = E[kkᵀ] (λC stands for the keys to preserve).")
@click.option("--checkpoint-every", type=int, default=10, show_default=True, metavar="N",
              help="Write the run's state into the store every N steps (every method); the same command "
                   "resumes from it after a kill.")
@click.option("--edits", type=int, required=True, metavar="E", help="Number of sequential edits (facts drawn from the store).")
@click.option("--tracked", type=int, default=None, metavar="K",
              help="Held-out known facts to follow (the forgetting curve) [default: min(64, available)].")
@click.option("--tracked-from", type=click.Choice(["known", "all"]), default="known", show_default=True,
              help="Draw tracked facts from those the model knows (the paper's choice) or from all others.")
@click.option("--method", type=str, default="rome", show_default=True,
              help="rome: ROME's rank-one edit with v* optimised as ROME does; direct: the same edit with a "
                   "cheap v* (the theory check); memit: MEMIT over --layers in --batch; alphaedit: AlphaEdit's "
                   "null-space update over --layers, applied to the model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for drawing edited and tracked facts.")
@click.option("--run", "run_name", default=None, metavar="NAME",
              help="Run name under /edits [default: <model>-<method>-layer<L>-e<E>-seed<S>].")
@click.option("--nullspace-threshold", type=float, default=2e-2, show_default=True, metavar="T",
              help="AlphaEdit variant: C's eigenvectors with eigenvalue ≥ T are the protected directions "
                   "(AlphaEdit's rule and default; with --nullspace-relative, eigenvalue ≥ T·max).")
@click.option("--nullspace-relative", is_flag=True,
              help="Read --nullspace-threshold relative to C's largest eigenvalue (comparable across layers).")
@click.option("--alphaedit-l2", type=float, default=10.0, show_default=True, metavar="L2",
              help="AlphaEdit variant: its regulariser (AlphaEdit's default).")
@click.option("--ridge", type=float, default=0.0, show_default=True, metavar="λ",
              help="Use C + λ·mean(diag C)·I (for an ill-conditioned C).")
@click.option("--direct-scale", type=float, default=1.0, show_default=True, help="direct: |δ| = scale·|W k*|.")
@click.option("--rome-steps", type=int, default=20, show_default=True,
              help="rome: evaluations of the loss, at most N − 1 Adam updates on δ (ROME's v_num_grad_steps).")
@click.option("--rome-lr", type=float, default=0.5, show_default=True, help="rome: Adam learning rate.")
@click.option("--kl-factor", type=float, default=0.0625, show_default=True, help="rome: weight of the KL term.")
@click.option("--weight-decay", type=float, default=0.5, show_default=True, help="rome: weight of ROME's decay term |δ|/|W k*|².")
@click.option("--vectors/--no-vectors", default=True, show_default=True,
              help="Store the (step, item, d_model) change vectors, not only their norms.")
@click.option("--threads", type=int, default=None, metavar="N",
              help="CPU threads for torch [default: torch's]; 1 is fastest on a machine shared with other jobs.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--eval-every", type=int, default=1, show_default=True, metavar="N",
              help="CounterFact's evaluation (efficacy, paraphrase, neighborhood, fluency) every N steps; 0: none.")
@click.option("--items", "items_file", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Items file with the CounterFact prompts (paraphrase_prompts, …) [default: the embedded "
                   "facts, when the store was extracted from them].")
@click.option("--collapse-threshold", type=float, default=0.5, show_default=True, metavar="F",
              help="Forecast: the step where fewer than F of the tracked facts are still known (collapse).")
@click.option("--dpi", type=int, default=150, show_default=True, help="Resolution of the --report PNGs.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write the run's figures (PNG) and report.html (offline; every complete run of the store on "
                   "this model, methods side by side) to DIR.")
@click.option("--overwrite", is_flag=True, help="Replace a run of the same name.")
@click.option("--quiet", is_flag=True, help="No per-step lines.")
@storage_option
@handle_errors
def edit_command(store, model, layer, layer_spec, batch, target, mom2_update_weight, checkpoint_every, edits, tracked, tracked_from, method, seed, run_name, nullspace_threshold,
                 nullspace_relative, alphaedit_l2, ridge,
                 direct_scale, rome_steps, rome_lr, kl_factor, weight_decay, vectors, threads, device, eval_every,
                 items_file, collapse_threshold, dpi, report_dir,
                 overwrite, quiet, storage_options):
    """Apply E sequential closed-form edits to a model whose keys and C are in STORE: ROME's
    rank-one W ← W + Λ(C⁻¹k*)ᵀ at one --layer, or MEMIT/AlphaEdit over --layers in --batch
    steps (checkpointed; the same command resumes a killed run). Record predicted, measured and
    live interference, efficacy and the forgetting curve of K held-out facts in /edits/<run>.

    \b
    Example:
      kisstore edit demo.zarr --model smollm2-135m --layer 4 --edits 50 --method rome --report edit-report
      kisstore edit demo.zarr --model smollm2-135m --method memit --layers 3-8 --batch 20 --edits 360
    """
    if dpi < 20 or dpi > 1200:
        from kisstore.errors import InputError

        raise InputError(f"--dpi must lie between 20 and 1200, got {dpi}")
    output_dir(report_dir, "--report")  # an unwritable destination fails before the edits, not after
    from kisstore.edit import EditOptions, RomeOptions, run_edit

    opts = EditOptions(
        store=store, model=model, layer=layer, edits=edits, tracked=tracked, tracked_from=tracked_from, method=method, seed=seed,
        run=run_name, nullspace_threshold=nullspace_threshold, nullspace_relative=nullspace_relative,
        alphaedit_l2=alphaedit_l2, ridge=ridge, direct_scale=direct_scale,
        rome=RomeOptions(steps=rome_steps, lr=rome_lr, kl_factor=kl_factor, weight_decay=weight_decay),
        layers=layer_spec, batch=batch, target=target, mom2_update_weight=mom2_update_weight,
        checkpoint_every=checkpoint_every,
        vectors=vectors, threads=threads, eval_every=eval_every, items=items_file,
        collapse_threshold=collapse_threshold, overwrite=overwrite, device=device,
        storage_options=storage_options_from(storage_options),
    )
    run, ds = run_edit(opts, progress=None if quiet else click.echo)
    if "layer" in ds.dims:  # memit/alphaedit: (step, layer, item)
        _spread_summary(run, ds, every=max(1, ds.sizes["step"] // 10))
    else:
        _summary(run, ds, edits)
    if report_dir:
        _write_reports(store, [run], Path(report_dir), dpi, storage_options_from(storage_options), main=ds,
                       others=True)


def _summary(run, ds, edits: int) -> None:
    from kisstore.edit.report import forgetting_table

    rows = forgetting_table(ds, every=max(1, edits // 10))
    click.echo(f"{'step':>5} {'top-1':>6} {'p_true':>7} {'efficacy':>8} {'|interf.|':>10} {'AlphaEdit':>10}")
    for r in rows:
        click.echo(f"{r['step']:>5} {r['top1']:>6.2f} {r['p_true']:>7.3f} {r['efficacy']:>8.3f} "
                   f"{r['interference']:>10.3g} {r['alphaedit_interference']:>10.3g}")
    click.echo(f"wrote /edits/{run}: predicted vs measured interference agree to "
               f"{ds.attrs['max_relative_error']:.1e} on the float64 weights, "
               f"{ds.attrs['max_live_relative_error']:.1e} in the live model's forward "
               f"(max relative errors), {ds.attrs['seconds']:.0f} s")


def _write_reports(store, runs: list[str], out: Path, dpi: int, storage_options, main=None, subfolders=False,
                   others=False) -> None:
    """The first run's figures in ``out`` (each run's in ``out/<run>`` with ``subfolders``), the
    methods side by side when there are several, and report.html over all of them (with
    ``others``: the first run and every other complete run of the store on its model)."""
    from kisstore.edit.html import store_runs, write_html
    from kisstore.edit.report import write_comparison, write_report

    if others:
        datasets = store_runs(store, runs[0], storage_options) or [main]
    else:
        datasets = [store_runs(store, r, storage_options, others=False)[0] for r in runs]
    paths = []
    for ds in datasets if subfolders else datasets[:1]:
        paths += write_report(ds, out / ds.attrs["run"] if subfolders else out, dpi=dpi)
    if len(datasets) > 1:
        paths.append(write_comparison(datasets, out, dpi=dpi))
    page = write_html(datasets, out)
    click.echo(f"wrote {len(paths)} figures and {page.name} ({len(datasets)} run{'s' * (len(datasets) > 1)}) to {out}")


@click.command("edit-report")
@store_argument
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--model", default=None, metavar="M",
              help="Only the runs on this model (its group name or alias) [default: the store's one model with runs].")
@click.option("--run", "run_names", multiple=True, metavar="NAME",
              help="A run under /edits to report (repeatable; the first is the main one) [default: every complete "
                   "run on the model].")
@click.option("--dpi", type=int, default=150, show_default=True, help="Resolution of the PNGs.")
@storage_option
@handle_errors
def edit_report_command(store, out, model, run_names, dpi, storage_options):
    """Report edit runs of STORE side by side (ROME, MEMIT, AlphaEdit, … on one model) in the
    folder OUT: report.html (offline), each run's figures in OUT/<run>/ and methods_compared.png.

    
    Example:
      kisstore edit-report cf.zarr edit-report --model smollm2-135m
      kisstore edit-report cf.zarr out --run rome-300 --run memit-300 --run alphaedit-300
    """
    from kisstore.edit.html import complete_runs
    from kisstore.errors import InputError

    if dpi < 20 or dpi > 1200:
        raise InputError(f"--dpi must lie between 20 and 1200, got {dpi}")
    options = storage_options_from(storage_options)
    runs = complete_runs(store, options, model=model, names=list(run_names))
    output_dir(out, "OUT")
    _write_reports(store, runs, Path(out), dpi, options, subfolders=True)


def _spread_summary(run, ds, every: int) -> None:
    tracked = ds["role"].values == "tracked"
    first, last = int(ds["layer"].values[0]), int(ds["layer"].values[-1])
    click.echo(f"{'step':>5} {'top-1':>6} {'p_true':>7} {'efficacy':>8} {'|interf.| L' + str(first):>13} "
               f"{'live err L' + str(first):>13} {'live err L' + str(last):>13}")
    last_step = ds.sizes["step"] - 1
    for s in sorted({*range(0, last_step + 1, every), last_step}):
        top1 = ds["top1"].values[s, tracked].mean() if tracked.any() else float("nan")
        p_true = float("nan")
        if tracked.any():
            p_true = float(ds["p_true"].values[s, tracked].mean())
        interf = float(ds["interference_live"].values[s, 0, tracked].mean()) if tracked.any() else float("nan")
        click.echo(f"{s:>5} {top1:>6.2f} {p_true:>7.3f} {ds['efficacy'].values[s]:>8.3f} {interf:>13.3g} "
                   f"{ds['step_live_relative_error'].values[s, 0]:>13.1e} "
                   f"{ds['step_live_relative_error'].values[s, -1]:>13.1e}")
    click.echo(f"wrote /edits/{run}: predicted vs measured agree to {ds.attrs['max_relative_error']:.1e} on the "
               f"float64 weights; predicted vs the live model to {ds.attrs['max_live_relative_error']:.1e} at "
               f"layer {first} (max relative errors; above it the live keys move), {ds.attrs['seconds']:.0f} s")


COMMANDS = [edit_command, edit_report_command]
