"""``kisstore extract``."""

from __future__ import annotations

import click

from kisstore_cli.common import handle_errors, parse_size, storage_option, storage_options_from


@click.command()
@click.option("--model", "models", multiple=True, required=True, metavar="M",
              help="Alias (see `kisstore models`), Hub id, local directory or .gguf file; repeatable.")
@click.option("--store", required=True, metavar="URL", help="Store path or fsspec URL (s3://…).")
@click.option("--items", default=None, metavar="FILE", help="Items file in CounterFact format [default: embedded facts].")
@click.option("--n-items", type=int, default=None, metavar="N", help="Keep the first N (known) items.")
@click.option("--known-only", is_flag=True, help="Keep only items every model knows (the paper's choice).")
@click.option("--corpus", default="wikipedia", show_default=True, metavar="SPEC",
              help="embedded | python-docs | wordnet | wikipedia | hf:NAME[:CONFIG] | hf:LOCAL_DATASET_DIR | "
                   "file/glob (.txt .jsonl .parquet).")
@click.option("--corpus-tokens", type=int, default=None, metavar="T", help="Stop after T tokens (whole documents).")
@click.option("--max-length", type=int, default=1024, show_default=True, help="Tokens per document (truncation; capped at the model's context).")
@click.option("--batch-tokens", type=int, default=4096, show_default=True, help="Padded tokens per forward batch.")
@click.option("--layers", default="all", show_default=True, metavar="SPEC", help="all | 5 | -1 | 0-5 | 0,3,7 | 0-29:2")
@click.option("--token", type=click.Choice(["subject_last", "subject_first", "last"]), default="subject_last",
              show_default=True, help="Token whose MLP input is the key.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--dtype", default="auto", show_default=True, help="auto | float32 | bfloat16 | float16")
@click.option("--cpu-kernels", type=click.Choice(["auto", "onednn", "torch"]), default="auto", show_default=True,
              help="Float32 kernels of the CPU corpus pass: oneDNN's (2× MKL's on AVX-512 AMD CPUs), torch's, "
                   "or oneDNN where a probe finds it exact.")
@click.option("--compile", "compile_", is_flag=True,
              help="Run the corpus pass's decoder layers through torch.compile (fused element-wise "
                   "kernels; worth it on a GPU for long passes: the first batches pay the compilation).")
@click.option("--max-memory", default=None, metavar="SIZE", help="Accumulator memory budget (e.g. 16GB) [default: from device].")
@click.option("--module", default=None, metavar="PATH", help="Override the hooked module path, with {i} for the layer.")
@click.option("--overwrite", is_flag=True, help="Redo models that are already complete in the store.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the model's repository.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle-based (.bin/.pt) weights.")
@click.option("--checkpoint-every", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="Seconds between checkpoints of the corpus pass.")
@click.option("--scheduler", default=None, metavar="ADDR",
              help="Dask scheduler for a sharded corpus pass (default: $DASK_SCHEDULER_ADDRESS with --shards).")
@click.option("--shards", type=int, default=1, show_default=True, metavar="K",
              help="Split the corpus pass into K shards run on the cluster's workers, each holding "
                   "n/K of the n corpus tokens to within 10 % (at least --batch-tokens each).")
@click.option("--break-lock", is_flag=True, help="Take over a write lock left by a process that died elsewhere.")
@click.option("--threads", type=int, default=None, metavar="N",
              help="CPU threads for torch in this process [default: torch's]; 1 is fastest on a machine "
                   "shared with other jobs (idle-waiting OpenMP threads slow small operations many times).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@storage_option
@handle_errors
def extract(models, store, items, n_items, known_only, corpus, corpus_tokens, max_length, batch_tokens, layers,
            token, device, dtype, cpu_kernels, compile_, max_memory, module, overwrite, trust_remote_code, allow_pickle,
            checkpoint_every, scheduler, shards, break_lock, threads, quiet, storage_options):
    """Capture keys (every layer) and all-layer covariances in one pass into a Zarr store.

    \b
    Example (the README's demo):
      kisstore extract --model smollm2-135m --store demo.zarr --corpus embedded \\
          --corpus-tokens 25000 --n-items 128 --known-only
    """
    from kisstore.extract import ExtractOptions, run_extract

    opts = ExtractOptions(
        models=list(models), store=store, storage_options=storage_options_from(storage_options), items=items,
        n_items=n_items, known_only=known_only, corpus=corpus, corpus_tokens=corpus_tokens, max_length=max_length,
        batch_tokens=batch_tokens, layers=layers, token=token, device=device, dtype=dtype, cpu_kernels=cpu_kernels,
        compile=compile_, max_memory=parse_size(max_memory) if max_memory else None, overwrite=overwrite, module=module,
        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, checkpoint_every=checkpoint_every,
        progress=not quiet, scheduler=scheduler, shards=shards, break_lock=break_lock, threads=threads,
    )
    written = run_extract(opts)
    click.echo(f"done: {', '.join(written) if written else 'nothing to do'} in {store}")


COMMANDS = [extract]
