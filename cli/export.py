"""``kisstore export`` and ``kisstore import-rome``: the editing tools' files (covariance caches both
ways, AlphaEdit's projector out)."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors, storage_option, storage_options_from, store_argument

_PRECISIONS = ["float32", "float64", "float16"]
_FORMATS = ["rome", "memit", "easyedit", "all", "alphaedit"]


@click.command("export")
@store_argument
@click.option("--model", default=None, metavar="M",
              help="Model group under /models (or its model name) [default: the store's only model].")
@click.option("--format", "fmt", type=click.Choice(_FORMATS), default="rome", show_default=True,
              help="rome: layer_stats caches where ROME/MEMIT look (model folder _name_or_path with '/' -> '_'); "
                   "memit: the same with the literal _t{batch_tokens} infix layer_stats writes for a "
                   "batch_tokens below the context; easyedit: model folder = last component of the model id "
                   "(EasyEdit, AlphaEdit); all: every one of these; alphaedit: AlphaEdit's null-space projector "
                   "null_space_project.pt for --layers.")
@click.option("--stats-dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="The tools' stats directory (STATS_DIR in ROME/MEMIT/AlphaEdit globals.yml, stats_dir in "
                   "EasyEdit hparams); required for the covariance formats.")
@click.option("--ds-name", default=None, metavar="NAME",
              help="Dataset name in the path ({ds_name}_stats); must equal the tool's mom2_dataset "
                   "[default: the store's corpus: wikipedia, python_docs, wordnet, the file's name, …].")
@click.option("--sample-size", default=None, metavar="N|all",
              help="Sample size in the file name; must equal the tool's mom2_n_samples "
                   "[default: documents the store's covariance was computed over].")
@click.option("--precision", type=click.Choice(_PRECISIONS), default="float32", show_default=True,
              help="dtype of the stored sum; must equal the tool's mom2_dtype.")
@click.option("--model-name", default=None, metavar="NAME",
              help="Model folder name [default: per --format, from the model's _name_or_path].")
@click.option("--layers", default=None, metavar="SPEC",
              help="Layers to export: all, 17, 13-17, 0,3,7 [default: all; alphaedit: required, the hparams' layers].")
@click.option("--threshold", default=None, type=float, metavar="T",
              help="alphaedit: nullspace_threshold, the eigenvalue of C below which a direction is kept [default: 0.02].")
@click.option("--out", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="alphaedit: the projector file, hparams' P_loc [default: ./null_space_project.pt].")
@click.option("--overwrite", is_flag=True, help="Replace files that already exist.")
@storage_option
@handle_errors
def export_command(store: str, model: str | None, fmt: str, stats_dir: str | None, ds_name: str | None,
                   sample_size: str | None, precision: str, model_name: str | None, layers: str | None,
                   threshold: float | None, out: str | None, overwrite: bool, storage_options: tuple[str, ...]) -> None:
    """Write a model's covariances where ROME, MEMIT, EasyEdit, AlphaEdit and the
    knowledge-superposition code look them up, or AlphaEdit's null-space projector.

    \b
    Examples:
      kisstore export demo.zarr --model gpt2-xl --stats-dir data/stats
      kisstore export demo.zarr --format all --stats-dir data/stats
      kisstore export demo.zarr --format alphaedit --layers 13-17 --out null_space_project.pt
    """
    from kisstore.errors import InputError

    if fmt == "alphaedit":
        for flag, value in (("--stats-dir", stats_dir), ("--ds-name", ds_name), ("--sample-size", sample_size),
                            ("--model-name", model_name)):
            if value is not None:
                raise InputError(f"{flag} names a covariance cache; --format alphaedit writes the projector "
                                 "(use --out, --layers, --threshold)")
        _export_projector(store, model, layers, threshold, out, overwrite, storage_options)
        return
    if threshold is not None or out is not None:
        raise InputError(f"--threshold and --out belong to --format alphaedit, not --format {fmt}")
    if stats_dir is None:
        raise InputError(f"--format {fmt} needs --stats-dir DIR (the tools' stats directory)")
    from kisstore.interop.rome_export import READERS, ExportOptions, run_export

    opts = ExportOptions(store=store, stats_dir=stats_dir, model=model,
                         storage_options=storage_options_from(storage_options), ds_name=ds_name,
                         sample_size=sample_size, precision=precision, model_name=model_name, layers=layers,
                         overwrite=overwrite, format=fmt)
    r = run_export(opts, echo=lambda p: click.echo(f"  {p}"), warn=lambda line: click.echo(line, err=True))
    size = "all" if r.sample_size is None else r.sample_size
    n_files = len({p for lf in r.layouts for p in lf.files.values()})
    where = r.folder if len(r.layouts) == 1 else r.folder.parent.parent
    click.echo(f"wrote {n_files} file(s) for {r.model_id} into {where}")
    click.echo(f"These are ROME layer_stats caches, read by {', '.join(READERS)}.")
    click.echo("They load them instead of recomputing when the hyperparameters name the same file:")
    click.echo(f"  stats dir      {r.folder.parent.parent}   (ROME/MEMIT/AlphaEdit: STATS_DIR in globals.yml; "
               "EasyEdit: stats_dir)")
    for lf in r.layouts:
        click.echo(f"  [{lf.rule.name}] model folder {lf.model_name}/   read by {lf.rule.readers}")
    if fmt == "rome":  # the line earlier versions printed
        click.echo(f"  model folder   {r.model_name}   (the model's _name_or_path with '/' -> '_'; "
                   "EasyEdit and AlphaEdit use its last component: --format easyedit)")
    click.echo(f"  mom2_dataset   {r.ds_name}")
    click.echo(f"  mom2_n_samples {size}")
    click.echo(f"  mom2_dtype     {r.precision}")
    click.echo(f"  layers         {r.hooked_module.replace('{i}', '{}')} for {sorted(r.files)}  (rewrite_module_tmp)")


def _export_projector(store: str, model: str | None, layers: str | None, threshold: float | None, out: str | None,
                      overwrite: bool, storage_options: tuple[str, ...]) -> None:
    from kisstore.interop.alphaedit import (
        DEFAULT_FILE,
        DEFAULT_THRESHOLD,
        ProjectorOptions,
        run_projector_export,
    )

    opts = ProjectorOptions(store=store, layers=layers, out=out or DEFAULT_FILE, model=model,
                            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                            storage_options=storage_options_from(storage_options), overwrite=overwrite)
    r = run_projector_export(opts, echo=click.echo)
    click.echo(f"wrote {r.path} (P: {len(r.layers)} x {r.d_ff} x {r.d_ff}, float32) and {r.sidecar} for {r.model_id}")
    click.echo("AlphaEdit and EasyEdit load it (torch.load(hparams.P_loc)) instead of recomputing when the "
               "hparams say:")
    click.echo(f"  P_loc               {r.path.resolve()}")
    click.echo(f"  layers              {r.layers}")
    click.echo(f"  nullspace_threshold {r.threshold:g}")
    click.echo(f"  null-space dims     {r.null_dims}")


@click.command("import-rome")
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False))
@click.option("--model", required=True, metavar="M",
              help="The model the statistics belong to (alias, Hub id, local directory or .gguf).")
@click.option("--store", required=True, metavar="URL", help="Store path or fsspec URL (s3://…).")
@click.option("--ds-name", default=None, metavar="NAME",
              help="Use {NAME}_stats [default: the only *_stats folder there].")
@click.option("--model-name", default=None, metavar="NAME",
              help="Model folder under a stats_dir root [default: _name_or_path with '/' -> '_', "
                   "else its last component].")
@click.option("--precision", type=click.Choice(_PRECISIONS), default=None,
              help="Only files of this precision (when a layer has several).")
@click.option("--sample-size", type=int, default=None, metavar="N",
              help="Only files with this sample size (when a layer has several).")
@click.option("--module", default=None, metavar="PATH", help="Override the key module path, with {i} for the layer.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model's repository.")
@click.option("--overwrite", is_flag=True, help="Replace a model that is complete (or in progress) in the store.")
@storage_option
@handle_errors
def import_rome_command(directory: str, model: str, store: str, ds_name: str | None, model_name: str | None,
                        precision: str | None, sample_size: int | None, module: str | None, trust_remote_code: bool,
                        overwrite: bool, storage_options: tuple[str, ...]) -> None:
    """Read ROME-style layer_stats caches (*_mom2_*.npz, any subset of layers) into a
    store's covariance, marked as imported; `kisstore extract` then adds only the keys.

    DIR is the tools' stats_dir root, a model folder inside it, or a {ds_name}_stats
    folder itself. Every file is checked against the model before anything is written.

    \b
    Example:
      kisstore import-rome data/stats --model gpt2-xl --store demo.zarr --ds-name wikipedia
    """
    from kisstore.interop.rome_import import ImportOptions, run_import

    opts = ImportOptions(source=directory, model=model, store=store,
                         storage_options=storage_options_from(storage_options), ds_name=ds_name,
                         model_name=model_name, precision=precision, sample_size=sample_size, module=module,
                         trust_remote_code=trust_remote_code, overwrite=overwrite)
    r = run_import(opts, echo=click.echo)
    if r.ignored:
        click.echo(f"ignored {len(r.ignored)} file(s) of another precision or sample size")
    click.echo(f"imported layers {r.layers} of {r.model_id} into {store} (cov_source=imported, not yet complete)")
    click.echo(f"next: kisstore extract --model {model} --store {store}   (adds the keys; no corpus pass)")


COMMANDS = [export_command, import_rome_command]
