"""``kisstore export`` and ``kisstore import-rome``: ROME-style covariance caches, both ways."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors, storage_option, storage_options_from, store_argument

_PRECISIONS = ["float32", "float64", "float16"]


@click.command("export")
@store_argument
@click.option("--model", default=None, metavar="M",
              help="Model group under /models (or its model name) [default: the store's only model].")
@click.option("--format", "fmt", type=click.Choice(["rome"]), default="rome", show_default=True,
              help="File format: rome = layer_stats .npz caches read by ROME, MEMIT, EasyEdit, AlphaEdit.")
@click.option("--stats-dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="The tools' stats directory (STATS_DIR in ROME/MEMIT/AlphaEdit globals.yml, stats_dir in "
                   "EasyEdit hparams).")
@click.option("--ds-name", default=None, metavar="NAME",
              help="Dataset name in the path ({ds_name}_stats); must equal the tool's mom2_dataset "
                   "[default: the store's corpus: wikipedia, python_docs, wordnet, the file's name, …].")
@click.option("--sample-size", default=None, metavar="N|all",
              help="Sample size in the file name; must equal the tool's mom2_n_samples "
                   "[default: documents the store's covariance was computed over].")
@click.option("--precision", type=click.Choice(_PRECISIONS), default="float32", show_default=True,
              help="dtype of the stored sum; must equal the tool's mom2_dtype.")
@click.option("--model-name", default=None, metavar="NAME",
              help="Model folder name [default: the model's _name_or_path with '/' -> '_'].")
@click.option("--layers", default=None, metavar="SPEC", help="Layers to export: all, 17, 13-17, 0,3,7 [default: all].")
@click.option("--overwrite", is_flag=True, help="Replace cache files that already exist.")
@storage_option
@handle_errors
def export_command(store: str, model: str | None, fmt: str, stats_dir: str, ds_name: str, sample_size: str | None,
                   precision: str, model_name: str | None, layers: str | None, overwrite: bool,
                   storage_options: tuple[str, ...]) -> None:
    """Write a model's covariances as ROME-style layer_stats caches, where ROME, MEMIT,
    EasyEdit, AlphaEdit and the knowledge-superposition code look them up.

    \b
    Example:
      kisstore export demo.zarr --model gpt2-xl --stats-dir data/stats
    """
    from kisstore.interop.rome_export import READERS, ExportOptions, run_export

    opts = ExportOptions(store=store, stats_dir=stats_dir, model=model,
                         storage_options=storage_options_from(storage_options), ds_name=ds_name,
                         sample_size=sample_size, precision=precision, model_name=model_name, layers=layers,
                         overwrite=overwrite)
    r = run_export(opts, echo=lambda p: click.echo(f"  {p}"), warn=lambda line: click.echo(line, err=True))
    size = "all" if r.sample_size is None else r.sample_size
    click.echo(f"wrote {len(r.files)} file(s) for {r.model_id} into {r.folder}")
    click.echo(f"These are ROME layer_stats caches, read by {', '.join(READERS)}.")
    click.echo("They load them instead of recomputing when the hyperparameters name the same file:")
    click.echo(f"  stats dir      {r.folder.parent.parent}   (ROME/MEMIT/AlphaEdit: STATS_DIR in globals.yml; "
               "EasyEdit: stats_dir)")
    click.echo(f"  model folder   {r.model_name}   (the model's _name_or_path with '/' -> '_'; "
               "some EasyEdit versions use its last component: re-export with --model-name)")
    click.echo(f"  mom2_dataset   {r.ds_name}")
    click.echo(f"  mom2_n_samples {size}")
    click.echo(f"  mom2_dtype     {r.precision}")
    click.echo(f"  layers         {r.hooked_module.replace('{i}', '{}')} for {sorted(r.files)}  (rewrite_module_tmp)")


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
