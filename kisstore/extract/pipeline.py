"""``kisstore extract``: items pass and corpus pass for each model, checkpointed into the store."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from kisstore import failpoints
from kisstore._version import __version__
from kisstore.data.corpus import resolve_corpus
from kisstore.data.items import Item, ItemSet, load_items
from kisstore.errors import InputError, StoreError
from kisstore.extract.accumulate import SecondMoment, layer_bytes, staging_bytes
from kisstore.extract.covariance import (
    WINDOW,
    CorpusChanged,
    WindowHasher,
    accumulate,
    check_count,
    corpus_batches,
    corpus_sha256,
    open_documents,
)
from kisstore.extract.cpu_kernels import check_choice as check_cpu_kernels
from kisstore.extract.cpu_kernels import resolve as resolve_kernels
from kisstore.extract.keys import item_pass, key_tokens
from kisstore.extract.positions import POSITIONS
from kisstore.extract.prefetch import prefetch
from kisstore.layers import parse_layers
from kisstore.limits import check_threads
from kisstore.store import chunking, commit, layout
from kisstore.store.checkpoint import Checkpoint
from kisstore.store.io import Store
from kisstore.store.urls import public_options, redact


@dataclass
class ExtractOptions:
    models: Sequence[str]
    store: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    items: str | None = None
    n_items: int | None = None
    known_only: bool = False
    corpus: str = "wikipedia"
    corpus_tokens: int | None = None
    max_length: int = 1024
    batch_tokens: int = 4096
    layers: str | None = None
    token: str = "subject_last"
    device: str = "auto"
    dtype: str = "auto"
    max_memory: int | None = None
    overwrite: bool = False
    module: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    checkpoint_every: float = 300.0
    progress: bool = True
    scheduler: str | None = None
    shards: int = 1
    break_lock: bool = False
    cpu_kernels: str = "auto"
    compile: bool = False  # decoder layers of the corpus pass through torch.compile
    threads: int | None = None  # torch intra-op threads in this process (1 is fastest on a CPU shared with other jobs)


def log(msg: str, storage_options: dict | None = None) -> None:
    print(redact(msg, storage_options), flush=True)


def validate(opts: ExtractOptions) -> None:
    """Everything that can be checked before touching a model or the store."""
    if not opts.models:
        raise InputError("no --model given")
    if opts.n_items is not None and opts.n_items <= 0:
        raise InputError(f"--n-items must be positive, got {opts.n_items}")
    if opts.corpus_tokens is not None and opts.corpus_tokens <= 0:
        raise InputError(f"--corpus-tokens must be positive, got {opts.corpus_tokens}")
    if opts.corpus_tokens is not None and opts.corpus_tokens > 10**13:
        raise InputError(f"--corpus-tokens {opts.corpus_tokens} is absurd (more than 10^13)")
    if not 1 <= opts.max_length <= 1_000_000:
        raise InputError(f"--max-length must be between 1 and 1000000, got {opts.max_length}")
    if not 0 <= opts.checkpoint_every < float("inf"):
        raise InputError(f"--checkpoint-every must be a number of seconds ≥ 0 (0: at every resumable point), "
                         f"got {opts.checkpoint_every}")
    if opts.shards < 1:
        raise InputError(f"--shards must be at least 1, got {opts.shards}")
    if opts.batch_tokens < 1:
        raise InputError(f"--batch-tokens must be positive, got {opts.batch_tokens}")
    check_threads(opts.threads)
    if opts.token not in POSITIONS:
        raise InputError(f"unknown --token {opts.token!r}: use one of {', '.join(POSITIONS)}")
    if opts.device not in ("auto", "cpu", "cuda") and not opts.device.startswith("cuda:"):
        raise InputError(f"unknown --device {opts.device!r}: use auto, cpu, cuda or cuda:N")
    check_cpu_kernels(opts.cpu_kernels)
    if opts.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"unknown --dtype {opts.dtype!r}: use auto, float32, bfloat16 or float16")
    ids = [layout.sanitize_model_id(m) for m in opts.models]
    if len(set(ids)) != len(ids):
        raise InputError("the same model is named twice")


def layer_groups(layers: Sequence[int], d: int, budget: int | None) -> list[list[int]]:
    """Fewest consecutive groups whose float64 accumulators (each the packed lower triangle,
    8·d(d+1)/2 bytes), plus the one float32 product they share in flight, fit the budget."""
    if budget is None:
        return [list(layers)]
    per_pass = pass_layers(d, budget)
    if per_pass < 1:
        raise InputError(
            f"--max-memory {budget} bytes is below one layer's accumulator ({one_layer_bytes(d)} bytes for d_ff={d})"
        )
    n_pass = -(-len(layers) // per_pass)
    size = -(-len(layers) // n_pass)
    return [list(layers[i : i + size]) for i in range(0, len(layers), size)]


def stage_bytes(d: int) -> int:
    """The float32 staging of either kernel path (the larger): one product in flight."""
    return max(staging_bytes(d, "onednn"), staging_bytes(d, "torch"))


def one_layer_bytes(d: int) -> int:
    """The least budget that runs: one layer's float64 triangle and the staging buffer."""
    return layer_bytes(d) + stage_bytes(d)


def pass_layers(d: int, budget: int) -> int:
    """How many layers' accumulators one corpus pass holds within ``budget`` bytes."""
    return max(0, (budget - stage_bytes(d)) // layer_bytes(d))


def default_memory(device: str) -> int:
    if device == "cpu":
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages * 0.5)
    import torch

    free, _total = torch.cuda.mem_get_info()
    return int(free * 0.7)


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS.

    glibc keeps freed memory of large temporaries in its heap (its mmap threshold grows as big
    blocks are freed), so without ``malloc_trim`` the item pass's activations would stay in the
    process's resident set for the rest of the run."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _same_corpus(a: Any, b: Any) -> bool:
    """Corpus specs naming the same corpus: equal, or file paths with the same file name (a relative
    path read from another directory, a moved copy)."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    named = ("embedded", "python-docs", "wordnet", "wikipedia")
    if a in named or b in named or a.startswith("hf:") or b.startswith("hf:"):
        return False
    return Path(a).name == Path(b).name


def default_budget(lm, cpu_kernels: str, compile: bool = False) -> int:
    """The device's share for accumulators, less the weight copies the CPU kernels will make
    (none with ``compile``: compiled layers keep torch's linears)."""
    from kisstore.extract.cpu_kernels import copied_weight_bytes, linears_on_onednn

    budget = default_memory(lm.device)
    if linears_on_onednn(cpu_kernels, lm.device, compile):
        budget -= copied_weight_bytes(lm.model)
    return max(budget, one_layer_bytes(lm.d_ff))  # too little memory: one layer per pass, not a refusal


def context_length(config) -> int | None:
    """Positions the model was built for (``n_positions`` / ``max_position_embeddings``), if it says."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class ModelRun:
    """One model's extraction: load, item pass, corpus passes, each step checkpointed."""

    def __init__(self, opts: ExtractOptions, store: Store, name: str, items: list[Item], items_sha: str):
        self.opts, self.store, self.name = opts, store, name
        self.model_id = layout.sanitize_model_id(name)
        self.items = items
        self.items_sha = items_sha
        self.lm = None
        self.imported = None
        self.client = None
        self.cleared = False
        self.lease = None  # the ModelLock held while this model is written
        self.d_ff_hint: int | None = None
        self.final_provenance: dict[str, Any] | None = None  # taken by final_cov, before the weights go
        self.max_length = opts.max_length  # capped at the model's context by prepare()

    def check_lease(self) -> None:
        """Before each write: stop if another writer has taken this model's lease."""
        if self.lease is not None:
            self.lease.check()

    def prepare(self) -> None:
        """Cheap checks from the config alone (model reachable, architecture, layer spec)."""
        from kisstore.models.loading import load_config, resolve_source
        from kisstore.models.registry import key_site, n_layers_of

        config = load_config(resolve_source(self.name), self.opts.trust_remote_code)
        key_site(config.model_type, self.opts.module)
        self.requested_layers = parse_layers(self.opts.layers, n_layers_of(config))
        self.architecture, self.n_layers = config.model_type, n_layers_of(config)
        self.d_ff_hint = d_ff_of(config, self.opts.module)  # for the corpus check before any work
        context = context_length(config)
        if context is not None and self.opts.max_length > context:
            # past its context a model either fails (learned positions) or computes keys it never
            # saw in training (rotary): truncate there, as ROME's layer_stats does (maxlen = n_positions)
            self.max_length = context
            log(f"[{self.model_id}] --max-length {self.opts.max_length} is longer than the model's context "
                f"({context} positions): documents are truncated at {context} tokens")
        if self.store.exists() and not self.opts.overwrite:
            self.imported = self.imported_cov()

    def differences(self, stored: dict[str, Any], source) -> list[str]:
        """How a complete model's stored provenance differs from what this run would make."""
        expect_id = Path(source.location).name if source.kind == "gguf" else source.location
        out = []
        # another path to a model of the same architecture and depth is taken for the same model
        # (a moved or re-mounted folder); another architecture or depth is another model
        if stored.get("model_id") not in (None, expect_id) and (
                stored.get("architecture") != self.architecture or stored.get("n_layers") != self.n_layers):
            out.append(f"model {stored.get('model_id')} ({stored.get('architecture')}, {stored.get('n_layers')} "
                       f"layers) → {expect_id} ({self.architecture}, {self.n_layers} layers)")
        o = self.opts
        # "all" matches whatever layers the stored model has (all, or those imported)
        layers = None if o.layers in (None, "", "all") else self.requested_layers
        wanted = {"layers": layers, "token_position": o.token, "corpus": o.corpus,
                  "corpus_tokens": o.corpus_tokens, "max_length": self.max_length}
        for key, value in wanted.items():
            if value is None and key == "layers":
                continue
            have = stored.get(key)
            if key in ("corpus", "corpus_tokens", "max_length") and stored.get("cov_source") == "imported":
                continue  # an imported covariance keeps its own corpus
            if key == "corpus" and _same_corpus(have, value):
                continue
            if (list(have) if isinstance(have, (list, tuple)) else have) != value:
                out.append(f"{key} {have} → {value}")
        return out

    def load(self) -> None:
        if self.lm is not None:
            return
        from kisstore.models.loading import load_model

        t = time.monotonic()
        failpoints.hit("load")
        log(f"[{self.model_id}] loading {self.name} …")
        self.lm = load_model(self.name, device=self.opts.device, dtype=self.opts.dtype, module=self.opts.module,
                             trust_remote_code=self.opts.trust_remote_code, allow_pickle=self.opts.allow_pickle)
        self.layers = parse_layers(self.opts.layers, self.lm.n_layers)
        if self.opts.max_memory is not None:
            layer_groups(self.layers, self.lm.d_ff, self.opts.max_memory)  # a budget below one layer fails now
        if self.opts.overwrite and not self.cleared:
            # only now, with the model loaded and every option checked, is the old result removed
            self.clear()
        self.imported = None if self.opts.overwrite else self.imported_cov()
        if self.imported is not None:
            have = [int(x) for x in self.imported["layer"].values]
            if self.opts.layers in (None, "", "all"):
                self.layers = have
            elif missing := sorted(set(self.layers) - set(have)):
                raise InputError(f"layers {missing} are not among the imported covariance's layers {have}")
        log(f"[{self.model_id}] {self.lm.provenance['architecture']}, {self.lm.n_layers} layers, "
            f"d_ff {self.lm.d_ff}, {self.lm.n_params / 1e6:.0f}M parameters on {self.lm.device} "
            f"({time.monotonic() - t:.1f} s)")
        self.ckpt = Checkpoint(self.store, self.model_id, self.fingerprint(), guard=self.check_lease,
                               overwrite=self.opts.overwrite)

    def clear(self) -> None:
        """--overwrite: start this model's extraction afresh (once per run). The complete model
        and its analysis stay until the new model is committed in their place (see
        :meth:`commit_ops`); only an earlier unfinished extraction's checkpoint goes, unless it
        is this very overwrite's, killed and now resumed with the same command."""
        self.check_lease()
        path = layout.checkpoint_path(self.model_id)
        if self.store.has(path):
            if not Checkpoint.of_this_overwrite(self.store, self.model_id, self.fingerprint()):
                self.store.delete(path)
                self.store.consolidate()  # readers must not see the removed checkpoint
        self.cleared = True

    def commit_ops(self, staged: bool) -> list[dict]:
        """The changes that publish this model's finished group (written in place, or staged
        when a complete model is being overwritten) in one commit: its completion, the end of
        its checkpoint, and, for --overwrite, the removal of the old analysis and scaling rows."""
        path = layout.model_path(self.model_id)
        ops = [commit.move(commit.staged(path), path)] if staged else [commit.set_attrs(path, {"complete": True})]
        ops += [commit.delete(layout.checkpoint_path(self.model_id)), commit.delete_if_empty(layout.CHECKPOINTS)]
        if self.opts.overwrite:  # every analysis of the replaced model goes: the default and the named ones
            for name in [None, *self.named_analyses()]:
                ops += [commit.delete(layout.analysis_path(self.model_id, name))]
                ops += self.scaling_without_this_model(name)
                if name is not None:  # an analysis left without models goes, as its staging folders do
                    ops += [commit.delete_if_empty(p) for p in (commit.staged(layout.analysis_root(name)),
                                                                commit.staged(layout.ANALYSES),
                                                                layout.analysis_root(name))]
            ops += [commit.delete_if_empty(layout.ANALYSES)] if self.named_analyses() else []
        return ops

    def named_analyses(self) -> list[str]:
        """The names of the analyses under /analyses that hold this model."""
        if not self.store.has(layout.ANALYSES):
            return []

        group = self.store.open_group(layout.ANALYSES)
        return sorted(name for name, _ in group.groups() if self.store.has(layout.analysis_path(self.model_id, name)))

    def scaling_without_this_model(self, name: str | None = None) -> list[dict]:
        """--overwrite: the scaling table loses this model's rows (its analysis is gone)."""
        path = f"{layout.analysis_root(name)}/scaling"
        if not self.store.has(path):
            return []
        table = self.store.open_dataset(path)
        models = [str(m) for m in table["model"].values]
        if self.model_id not in models:
            return []
        if models == [self.model_id]:
            return [commit.delete(path)]
        rest = table.isel(model=[i for i, m in enumerate(models) if m != self.model_id]).load()
        for var in rest.variables.values():
            var.encoding = {}
        self.store.write_dataset(commit.staged(path), rest)
        return [commit.move(commit.staged(path), path)]

    def imported_cov(self) -> xr.Dataset | None:
        """The covariance `kisstore import-rome` put in this model's group, if any."""
        path = layout.model_path(self.model_id)
        if not self.store.has(path) or self.store.group_attrs(path).get("cov_source") != "imported":
            return None
        return self.store.open_dataset(path)

    def unload(self) -> None:
        self.lm = None
        if self.opts.compile:
            from kisstore.extract.hooks import release_compiled

            release_compiled()  # the next model starts with the compiler's limit free
        release_memory()

    def fingerprint(self) -> dict[str, Any]:
        o = self.opts
        return {
            "model_revision": self.lm.provenance["model_revision"], "hooked_module": self.lm.key_site.template,
            "layers": self.layers, "token_position": o.token, "corpus": o.corpus, "corpus_tokens": o.corpus_tokens,
            "max_length": self.max_length, "items_sha256": self.items_sha,
            "dtype": self.lm.dtype,
        }

    def open_checkpoint(self) -> dict[str, Any]:
        state = self.ckpt.open(self.layers, self.lm.d_ff)
        if self.ckpt.restarted_old_layout:
            self.ckpt.restarted_old_layout = False
            log(f"[{self.model_id}] the store's unfinished extraction was checkpointed by an earlier kisstore "
                "(full d_ff × d_ff sums, not packed triangles); it cannot be resumed and starts over")
        return state

    # -- item pass ----------------------------------------------------------------------
    def run_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.load()
        state = self.open_checkpoint()
        want = [it.case_id for it in self.items]
        found = None
        if state.get("items_done"):
            # the checkpoint's item pass may cover more items than today's candidates: a resumed
            # run whose first attempt wrote /items (--known-only, --n-items) reads its selection
            keys, known, p_true, case_ids = self.ckpt.load_items()
            at = {int(c): i for i, c in enumerate(case_ids)}
            if all(c in at for c in want):
                found = [at[c] for c in want]
                log(f"[{self.model_id}] item pass: resumed from checkpoint")
        if found is None:
            r = item_pass(self.lm, self.items, self.layers, position=self.opts.token,
                          batch_tokens=min(self.opts.batch_tokens, 2048), progress=self.opts.progress)
            self.ckpt.save_items(r.keys, r.known, r.p_true, want)
            del r
            release_memory()  # the item pass's logits and activations, before the corpus pass
            keys, known, p_true, _ = self.ckpt.load_items()
            found = list(range(len(want)))
        keys, known, p_true = keys[:, found], known[found], p_true[found]
        token_ids, tokens = key_tokens(self.lm.tokenizer, self.items, self.opts.token)  # tokenizer only
        log(f"[{self.model_id}] knows {int(known.sum())} of {len(self.items)} items")
        return keys, known, p_true, token_ids, tokens

    # -- corpus pass --------------------------------------------------------------------
    def run_corpus(self) -> tuple[Any, np.ndarray]:
        """Return (cov (layer, d, d) float64, n_tokens (layer,)): an extracted cov is lazy
        (:meth:`final_cov`), an imported one a numpy array (read before its group is rewritten)."""
        from tqdm.auto import tqdm

        self.load()
        if self.imported is not None:
            ds = self.imported.sel(layer=self.layers)
            log(f"[{self.model_id}] using the imported covariance ({ds.attrs.get('imported_from')}); "
                "no corpus pass")
            return ds["cov"].values.astype(np.float64), ds["n_tokens"].values.astype(np.int64)
        if self.client is not None:
            return self.run_corpus_sharded()
        state = self.open_checkpoint()
        d, o = self.lm.d_ff, self.opts
        budget = o.max_memory if o.max_memory is not None else default_budget(self.lm, o.cpu_kernels, o.compile)
        rows_of = {layer: r for r, layer in enumerate(self.layers)}
        done_counts = {int(k): v for k, v in (state.get("done_counts") or {}).items()}
        # finished layers keep their sums; the rest are grouped under today's budget, which may
        # differ from the killed run's (a partial pass is resumed only for the very same layers)
        pending = [layer for layer in self.layers if rows_of[layer] not in done_counts]
        groups = layer_groups(pending, d, budget) if pending else []
        if len(groups) > 1:
            log(f"[{self.model_id}] accumulators for {len(pending)} layers exceed the memory budget: "
                f"{len(groups)} corpus passes of ≤ {len(groups[0])} layers")
        if "group_rows" not in state and "slot" in state and state.get("tokens"):
            log(f"[{self.model_id}] the checkpoint's unfinished corpus pass was written by an earlier kisstore "
                "and is redone from the start; finished layers are kept")
        elif state.get("group_rows") and all([rows_of[x] for x in g] != state["group_rows"] for g in groups):
            log(f"[{self.model_id}] the layer grouping differs from the interrupted run's (memory budget): "
                "its unfinished pass is redone from the start; finished layers are kept")
        corpus = resolve_corpus(o.corpus)
        files = corpus.files()
        resuming = any("slot" in state and state.get("group_rows") == [rows_of[x] for x in g] for g in groups)
        # the windows a checkpoint read: kept sums (finished layers, a resumed pass) came from them
        expect = list(state.get("corpus_windows") or []) if (done_counts or resuming) else []
        if (done_counts or resuming) and "corpus_windows" not in state:
            log(f"[{self.model_id}] the checkpoint was written by a kisstore that did not fingerprint the corpus: "
                "the documents it read cannot be checked against today's")

        def start(group):
            """(resumed?, docs, tokens, hasher, documents) of a pass over ``group``: resumed where the checkpoint
            is, after checking the skipped documents are those it read (CorpusChanged if not)."""
            rows = [rows_of[layer] for layer in group]
            resume = "slot" in state and state.get("group_rows") == rows
            docs, tokens = (int(state["docs"]), int(state["tokens"])) if resume else (0, 0)
            hasher = WindowHasher(expect, files=state.get("corpus_files") or [])
            hasher.compare_files(files)  # names the files in the message, if the windows differ
            capped = o.corpus_tokens is not None and tokens >= o.corpus_tokens
            # a pass checkpointed inside a window had run out of corpus there
            documents = open_documents(corpus, docs, hasher, ended=resume and docs % WINDOW != 0 and not capped)
            return resume, docs, tokens, hasher, documents

        opened = start(groups[0]) if groups else None  # a changed corpus is refused before anything is written
        self.record_pass_settings(state, resumed=bool(done_counts) or bool(state.get("tokens")))
        for gi, group in enumerate(groups):
            rows = [rows_of[layer] for layer in group]
            moments = {layer: SecondMoment(d, self.lm.device, o.cpu_kernels) for layer in group}
            resume, docs, tokens, hasher, documents = opened if gi == 0 else start(group)
            opened = None
            if resume:
                for layer, u in zip(group, self.ckpt.load_partial(rows), strict=True):
                    moments[layer].load(u, state["tokens"])
                log(f"[{self.model_id}] resuming corpus pass {gi + 1}/{len(groups)} at document {docs}, "
                    f"{tokens} tokens")

            bar = tqdm(total=o.corpus_tokens, initial=tokens, unit="tok", unit_scale=True, disable=not o.progress,
                       desc=f"corpus {self.model_id} [{gi + 1}/{len(groups)}] layers {group[0]}-{group[-1]}")
            # the next windows are read and tokenized in a background thread during the forward
            batches = prefetch(corpus_batches(self.lm.tokenizer, corpus, max_length=self.max_length,
                                              batch_tokens=o.batch_tokens, token_cap=o.corpus_tokens,
                                              skip_docs=docs, tokens_before=tokens, hasher=hasher,
                                              documents=documents))
            progress = {"docs": docs, "tokens": tokens}

            def on_progress(batch, _p=progress, _bar=bar):
                if batch.docs_end is not None:
                    _p["docs"] = batch.docs_end
                _p["tokens"] += batch.tokens
                _bar.update(batch.tokens)

            def checkpoint(batch, _g=group, _rows=rows, _p=progress, _m=moments, _h=hasher):
                self.ckpt.save_partial(_rows, (_m[x].packed() for x in _g), group_rows=_rows,
                                       docs=_p["docs"], tokens=_p["tokens"],
                                       corpus_windows=_h.committed(_p["docs"]), corpus_files=files)

            accumulate(self.lm, group, batches, moments, on_progress=on_progress,
                       checkpoint=checkpoint, checkpoint_every=o.checkpoint_every, cpu_kernels=o.cpu_kernels,
                       compile=o.compile)
            bar.close()
            hasher.finish()  # an earlier pass (finished layers) that read more windows: the corpus shrank
            count = moments[group[0]].count
            check_count(count, d, o.corpus)
            self.note_short_corpus(count)
            self.ckpt.save_done(rows, (moments[x].moment() for x in group), group_rows=None, docs=0, tokens=0,
                                corpus_documents=progress["docs"], corpus_windows=hasher.committed(progress["docs"]),
                                corpus_files=files)
            expect = self.ckpt.state["corpus_windows"]  # the next group's pass must read the same
            state = self.ckpt.state
            done_counts = {int(k): v for k, v in state["done_counts"].items()}
            del moments, batches, checkpoint, on_progress  # the closures hold the accumulators too
            release_memory()  # this group's accumulators, before the next group's or the final covariance
        return self.final_cov()

    def pass_settings(self) -> dict[str, Any]:
        """The corpus pass's settings that change only float32 rounding, not what is computed:
        free to differ between a killed run and its resumption (the fingerprint refuses the rest)."""
        o = self.opts
        return {"batch_tokens": o.batch_tokens, "cpu_kernels": resolve_kernels(o.cpu_kernels, self.lm.device),
                "compiled": o.compile}

    def record_pass_settings(self, state: dict[str, Any], *, resumed: bool) -> None:
        """Append today's settings to the checkpoint's list when they differ from the last run's,
        saying so on a resume; the provenance keeps the list (``corpus_pass_settings``)."""
        used = list(state.get("pass_settings") or [])
        now = self.pass_settings()
        if used and used[-1] == now:
            return
        if used and resumed:
            changed = ", ".join(f"{k} {used[-1].get(k)} → {v}" for k, v in now.items() if used[-1].get(k) != v)
            log(f"[{self.model_id}] resuming with other corpus-pass settings ({changed}): sums from both add up "
                "(results differ from one uninterrupted run by float32 rounding only); the provenance's "
                "corpus_pass_settings lists both")
        self.ckpt.commit(pass_settings=[*used, now])

    def note_short_corpus(self, count: int) -> None:
        cap = self.opts.corpus_tokens
        if cap is not None and count < cap:
            log(f"[{self.model_id}] warning: corpus {self.opts.corpus!r} ran out after {count} tokens, fewer than "
                f"--corpus-tokens {cap}; the covariance uses all {count} (n_tokens records it)")

    def final_cov(self):
        """C = S / n of every layer from the checkpoint's finished sums, as a lazy Dask array
        (layer, d, d) float64 whose blocks are the store's write blocks of ``cov`` (whole shards:
        a few layers at small d_ff, one at large): each is unpacked from its packed triangles
        only when the final write stores it (:func:`write_model`), so at most one block of
        float64 covariances is in memory, never all of them. The model is unloaded first (its
        provenance kept): the weights and the covariances are never in memory together."""
        d = self.lm.d_ff
        self.final_provenance = self.provenance()
        self.unload()
        counts = self.ckpt.state["done_counts"]  # every layer's, as its finished moment records it
        n_tokens = np.array([counts[str(r)] for r in range(len(self.layers))], dtype=np.int64)
        return lazy_cov(self.ckpt.load_done, len(self.layers), d), n_tokens

    def run_corpus_sharded(self) -> tuple[Any, np.ndarray]:
        """The corpus pass split into shards run on the Dask cluster's workers."""
        from kisstore.extract import shards
        from kisstore.extract.covariance import count_documents

        o = self.opts
        state = self.open_checkpoint()
        done = {int(k): v for k, v in (state.get("done_counts") or {}).items()}
        if len(done) < len(self.layers):
            corpus = resolve_corpus(o.corpus)
            hasher = WindowHasher()  # the windows' digests, read along with the count
            lengths: list[int] = []  # each document's tokens: what the plan balances
            n_docs = count_documents(self.lm.tokenizer, corpus, max_length=self.max_length, token_cap=o.corpus_tokens,
                                     hasher=hasher, lengths=lengths)
            windows = hasher.digests
            # a rerun (the client killed, a shard failed) keeps the plan its checkpoint recorded, so its
            # committed shards stay valid; another --shards or --batch-tokens plans afresh
            asked = {"requested": o.shards, "batch_tokens": o.batch_tokens}
            recorded = state.get("shard_plan") or {}
            if {k: recorded.get(k) for k in asked} == asked:
                spans = [shards.Span.of(x) for x in recorded["spans"]]
            else:
                spans = shards.plan(lengths, o.shards, batch_tokens=o.batch_tokens, window=WINDOW)
            load = {"device": o.device, "dtype": o.dtype, "module": o.module,
                    "trust_remote_code": o.trust_remote_code, "allow_pickle": o.allow_pickle}
            tasks = [shards.ShardTask(self.name, self.model_id, load, o.store, o.storage_options, self.layers,
                                      o.corpus, self.max_length, o.batch_tokens, o.max_memory, i, sp.as_dict(),
                                      len(spans), cpu_kernels=o.cpu_kernels, compile=o.compile,
                                      windows=windows[:-(-sp.docs[1] // WINDOW)])
                     for i, sp in enumerate(spans)]
            shards.changed_shards(self.store, tasks, WINDOW)  # committed shards read another corpus: refused
            if sum(sp.tokens for sp in spans) != sum(lengths):
                raise CorpusChanged(f"the corpus changed since this run was checkpointed (it now has {sum(lengths)} "
                                    f"tokens, the shards were planned over {sum(sp.tokens for sp in spans)}); "
                                    "rerun with --overwrite to start over")
            sizes = ", ".join(f"{sp.tokens:,}" for sp in spans)
            log(f"[{self.model_id}] corpus pass: {n_docs} documents, {sum(lengths):,} tokens in {len(tasks)} shards "
                f"on the cluster ({sizes} tokens)")
            self.check_lease()  # the workers write their shards under this run's lease
            self.ckpt.commit(shard_plan={**asked, "spans": [sp.as_dict() for sp in spans]})  # before any shard runs
            shards.run_sharded(tasks, self.client, progress=o.progress)
            merged = shards.merge(self.store, self.model_id, spans, len(self.layers))
            count = merged[0].count
            check_count(count, self.lm.d_ff, o.corpus)
            self.note_short_corpus(count)
            rows = list(range(len(self.layers)))
            self.ckpt.save_done(rows, merged, corpus_documents=n_docs, shards_run=len(spans),
                                corpus_windows=windows)
        return self.final_cov()

    def provenance(self) -> dict[str, Any]:
        import numpy
        import zarr

        p = dict(self.lm.provenance)
        o = self.opts
        p["cov_source"] = "extracted"
        if self.imported is not None:
            p.update({k: v for k, v in self.imported.attrs.items()
                      if k.startswith("imported") or k in ("corpus", "corpus_documents", "corpus_tokens",
                                                           "max_length")})
            p["cov_source"] = "imported"
        p["versions"] = {**p.get("versions", {}), "kisstore": __version__, "zarr": zarr.__version__,
                         "numpy": numpy.__version__, "xarray": xr.__version__}
        p.update({
            "token_position": o.token, "corpus": o.corpus, "corpus_tokens": o.corpus_tokens,
            "corpus_documents": self.ckpt.state.get("corpus_documents"), "max_length": self.max_length,
            # SHA-256 of the documents the pass read (of their 64-document windows' digests, in order)
            "corpus_sha256": corpus_sha256(self.ckpt.state.get("corpus_windows") or []),
            **({} if self.imported is None else {k: self.imported.attrs.get(k) for k in
                                                  ("corpus", "corpus_documents", "corpus_tokens", "max_length",
                                                   "corpus_sha256")}),
            "batch_tokens": o.batch_tokens, "items_sha256": self.items_sha,
            "layers": self.layers, "storage_options": public_options(o.storage_options),
            # the shards that ran: --shards is an upper bound (a shard holds at least --batch-tokens tokens)
            "shards": self.ckpt.state.get("shards_run") if self.client is not None else None,  # None: none ran
            "shards_requested": o.shards if self.client is not None else None,
            # float32 kernels of the corpus pass (sharded: as this process resolves them)
            "cpu_kernels": resolve_kernels(o.cpu_kernels, self.lm.device),
            "compiled": o.compile,  # the corpus pass's decoder layers ran through torch.compile
            # every run's settings of that kind that added to C: more than one after a resume with others
            "corpus_pass_settings": None if self.imported is not None else
                                    self.ckpt.state.get("pass_settings") or [self.pass_settings()],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        return p


def select_items(items: list[Item], known_by_model: dict[str, np.ndarray], n_items: int | None,
                 known_only: bool) -> list[int]:
    """Indices of the items to store: the first N (known to every model with --known-only)."""
    idx = np.arange(len(items))
    if known_only:
        mask = np.ones(len(items), dtype=bool)
        for k in known_by_model.values():
            mask &= k
        idx = idx[mask]
        if n_items is not None and len(idx) < n_items:
            who = ", ".join(known_by_model)
            raise InputError(f"--known-only: only {len(idx)} items are known to {who}; lower --n-items "
                             f"(asked for {n_items})")
    if n_items is not None:
        idx = idx[:n_items]
    if len(idx) == 0:
        raise InputError("no items selected (no item is known to every model)")
    return idx.tolist()


def items_dataset(items: list[Item]) -> xr.Dataset:
    def col(f):
        return ("item", np.array([getattr(it, f) for it in items], dtype=object))

    return xr.Dataset({f: col(f) for f in layout.ITEM_FIELDS},
                      coords={"item": np.array([it.case_id for it in items], dtype=np.int64)})


def model_dataset(keys, cov, n_tokens, known, p_true, layers, case_ids, key_token_id=None,
                  key_token=None) -> xr.Dataset:
    data = {
        layout.KEY: (("layer", "item", "d_ff"), keys.astype(np.float32),
                     {"long_name": "MLP key k (input of the down-projection) at the item's token"}),
        "cov": (("layer", "d_ff", "d_ff_"), cov),
        "n_tokens": ("layer", n_tokens),
        "known": ("item", known.astype(bool)),
        "p_true": ("item", p_true.astype(np.float32)),
    }
    if key_token_id is not None:  # the token at the key position (stores before 0.2 lack it)
        data["key_token_id"] = ("item", np.asarray(key_token_id, dtype=np.int64),
                                {"long_name": "token id at the key position"})
        data["key_token"] = ("item", np.asarray(key_token, dtype=object),
                             {"long_name": "decoded token at the key position"})
    return xr.Dataset(data, coords={"layer": np.asarray(layers, dtype=np.int64),
                                    "item": np.asarray(case_ids, dtype=np.int64)})


def cov_blocks(n_layers: int, d: int) -> list[range]:
    """The layer rows of each block the store writes ``cov`` in whole (store.chunking's shards,
    or chunks where a layer is not sharded): the blocks :func:`lazy_cov` makes."""
    per = chunking.chunking(("layer", "d_ff", "d_ff_"), (n_layers, d, d), np.float64).write_chunks[0]
    return [range(a, min(a + per, n_layers)) for a in range(0, n_layers, per)]


def unpacked_cov(load_moment, d: int, rows: range) -> np.ndarray:
    """C = S / n of the layer rows ``rows``: each row's moment (``load_moment(row)``) finished in
    place into one (rows, d, d) block."""
    out = np.empty((len(rows), d, d), dtype=np.float64)
    for i, r in enumerate(rows):
        load_moment(r).finish(out=out[i])  # in place: no d × d temporary
    return out


def lazy_cov(load_moment, n_layers: int, d: int):
    """Every layer's C as a Dask array of :func:`cov_blocks`, each computed by :func:`unpacked_cov`
    when it is stored: the final write holds one block of covariances at a time."""
    import dask
    import dask.array as da

    parts = [da.from_delayed(dask.delayed(unpacked_cov, pure=False)(load_moment, d, rows),
                             shape=(len(rows), d, d), dtype=np.float64) for rows in cov_blocks(n_layers, d)]
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)


def write_model(store: Store, path: str, ds: xr.Dataset) -> None:
    """``store.write_dataset(path, ds)`` computing ``ds``'s lazy blocks (the covariance of
    :func:`lazy_cov`) one after another in this process: never several blocks at once (Dask's
    thread pool), nor on the workers of a sharded run's cluster (its client is the default
    scheduler while the run holds it)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        store.write_dataset(path, ds)


def store_items(store: Store) -> list[Item] | None:
    if not store.has(layout.ITEMS):
        return None
    ds = store.open_dataset(layout.ITEMS).load()
    return [Item(int(c), str(p), str(s), str(r), str(t), str(n)) for c, p, s, r, t, n in zip(
        ds["item"].values, ds.prompt.values, ds.subject.values, ds.relation_id.values,
        ds.target_true.values, ds.target_new.values, strict=True)]


def run_extract(opts: ExtractOptions) -> list[str]:
    """Extract keys and covariances for every model; returns the model ids written."""
    validate(opts)
    if opts.threads is not None:
        import torch

        torch.set_num_threads(opts.threads)
    item_set: ItemSet = load_items(opts.items)
    store = Store(opts.store, opts.storage_options)
    store.check_links()  # a link inside the store (a linked models/ or _checkpoints/) is refused before any work
    if store.foreign_files():
        raise InputError(f"--store {opts.store}: this folder holds other files and no kisstore store; "
                         "give a new or empty path (a store is a folder of its own)")
    existing_items = None
    if store.exists():
        store.validate()
        commit.recover(store)  # a commit that a kill interrupted is completed first
        existing_items = store_items(store)
        root_items_sha = store.group_attrs(layout.ITEMS).get("items_sha256") if existing_items else None
        if existing_items is not None and root_items_sha not in (None, item_set.sha256) and opts.items is not None:
            raise InputError("this store's items came from a different items file; use another store")
    candidates = existing_items if existing_items is not None else item_set.items
    if opts.n_items is not None and opts.n_items > len(candidates):
        raise InputError(f"--n-items {opts.n_items} is larger than the {len(candidates)} items available")
    if existing_items is None and opts.n_items is not None and not opts.known_only:
        candidates = candidates[: opts.n_items]  # the first N are the selection: no item pass over the rest

    # which models need work
    from kisstore.models.loading import pick_device, resolve_source

    pick_device(opts.device)  # a CUDA device that is not there fails now, not after other work
    runs: list[ModelRun] = []
    for name in opts.models:
        source = resolve_source(name)  # unknown models fail before anything is written
        mid = layout.sanitize_model_id(name)
        run = ModelRun(opts, store, name, candidates, item_set.sha256)
        run.prepare()  # layer spec, architecture, module: checked even for a model that is done
        if store.exists() and mid in store.model_ids(complete_only=True) and not opts.overwrite:
            stored = store.group_attrs(layout.model_path(mid))
            if differences := run.differences(stored, source):
                raise InputError(
                    f"{mid} is complete in {redact(opts.store, opts.storage_options)} with other settings "
                    f"({'; '.join(differences)}); pass --overwrite to redo it, or use another store")
            log(f"[{mid}] already complete in {opts.store} with these settings; skipping "
                "(pass --overwrite to redo it)", opts.storage_options)
            continue
        runs.append(run)
    if not runs:
        return []
    if opts.overwrite or any(run.imported is None for run in runs):
        # not needed when every covariance was imported; before any lease, store.init or --overwrite's delete
        check_corpus(opts, [run for run in runs if opts.overwrite or run.imported is None])
    client = None
    if opts.shards > 1 or opts.scheduler:
        from kisstore.extract.shards import connect

        client = connect(opts.scheduler)
        for run in runs:
            run.client = client
    try:
        return _extract_leased(opts, store, runs, candidates, existing_items, item_set)
    finally:
        if client is not None:
            client.close()  # not left behind as the process's default scheduler


def check_corpus(opts: ExtractOptions, runs: list[ModelRun]) -> None:
    """Read the corpus through once (local files) or open it (Hub) before anything is loaded or
    written: a corpus that is not text, has a bad JSONL line, or cannot give any model more
    token vectors than its key dimension (a singular covariance) is refused here, not after
    the item pass, a half-made store and, with ``--overwrite``, the old result deleted."""
    size = resolve_corpus(opts.corpus).probe()
    if size is None:
        return
    for run in runs:
        d = run.d_ff_hint
        if d is None:
            continue
        most = size.max_tokens(run.max_length)
        if most <= d:
            raise InputError(
                f"corpus {opts.corpus!r} holds at most {most} tokens ({size.utf8_bytes} bytes of text), not more "
                f"than {run.model_id}'s key dimension {d}: the covariance would be singular; use a larger corpus")


def d_ff_of(config, module: str | None) -> int | None:
    """The key dimension a config declares (the MLP's inner width), or None when unsure (--module)."""
    if module:
        return None
    for attr in ("intermediate_size", "n_inner", "ffn_dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    width = getattr(config, "n_embd", None)
    if getattr(config, "n_inner", 0) is None and isinstance(width, int) and width > 0:
        return 4 * width  # GPT-2 and GPT-J: n_inner None means 4·n_embd
    return None


def _extract_leased(opts: ExtractOptions, store: Store, runs: list[ModelRun], candidates: list[Item],
                    existing_items: list[Item] | None, item_set: ItemSet) -> list[str]:
    """Take every model's lease, extract, release; a first run failing on bad input leaves no store."""
    from kisstore.store.lock import ModelLock

    locks = [ModelLock(store, run.model_id, break_lock=opts.break_lock) for run in runs]
    for run, lock in zip(runs, locks, strict=True):
        run.lease = lock
    taken = []
    created = not store.exists()
    try:
        try:
            for lock in locks:
                lock.acquire()
                taken.append(lock)
            return _extract_locked(opts, store, runs, candidates, existing_items, item_set)
        finally:
            for lock in taken:
                lock.release()
    except InputError:
        # bad input found once the model was loaded (its module, device, memory budget): a store
        # this run created and left without a model or checkpoint is removed, not left half-made
        if created:
            store.remove_if_unused()
        raise


def _extract_locked(opts: ExtractOptions, store: Store, runs: list[ModelRun], candidates: list[Item],
                    existing_items: list[Item] | None, item_set: ItemSet) -> list[str]:
    store.init()

    # phase 1: item passes (cheap), then the selection every model shares
    results = {}
    for i, run in enumerate(runs):
        results[run.model_id] = run.run_items()
        if i < len(runs) - 1:
            run.unload()
    failpoints.pause("items")
    with commit.lease(store, commit.ITEMS_LEASE):
        # under the items lease: a run started beside this one on a fresh store may have written
        # the items meanwhile; then this run uses that selection, as any later run would
        if existing_items is None and (now := store_items(store)) is not None:
            existing_items = now
            at = {it.case_id: i for i, it in enumerate(candidates)}
            if any(it.case_id not in at for it in now):
                raise StoreError("another extraction wrote this store's items from other candidates while "
                                 "this one ran; rerun the same command to use them")
            pick = [at[it.case_id] for it in now]
            results = {m: (k[:, pick], kn[pick], pt[pick], ti[pick], tt[pick])
                       for m, (k, kn, pt, ti, tt) in results.items()}
            candidates = now
            log("note: another extraction wrote this store's items while this one ran; using its selection")
        if existing_items is not None:
            selected = list(range(len(candidates)))
            stored = store.group_attrs(layout.ITEMS).get("selection") or {}
            asked = {"n_items": opts.n_items, "known_only": opts.known_only}
            if (opts.known_only or opts.n_items) and any(stored.get(k) != v for k, v in asked.items()):
                # the same command again (a resumed run, another model) is no news; other flags are
                how = (f" (selected with --n-items {stored.get('n_items') or 'all'}"
                       f"{' --known-only' if stored.get('known_only') else ''})" if stored else "")
                log(f"note: the store already has its items{how}; --known-only/--n-items do not change them")
            store.consolidate()  # the new checkpoints show in `kisstore info` while the corpus pass runs
        else:
            selected = select_items(candidates, {m: r[1] for m, r in results.items()}, opts.n_items,
                                    opts.known_only)
            chosen = [candidates[i] for i in selected]
            # staged in full, then moved into place: /items is there whole or not at all
            path = commit.staged(layout.ITEMS)
            store.write_dataset(path, items_dataset(chosen))
            store.set_attrs(path, {"source": os.path.basename(item_set.source), "items_sha256": item_set.sha256,
                                   "selection": {"n_items": opts.n_items, "known_only": opts.known_only,
                                                 "models": [r.model_id for r in runs]}})
            commit.commit(store, [commit.move(path, layout.ITEMS)])
            log(f"items: {len(chosen)} of {len(candidates)} selected"
                + (" (known to every model)" if opts.known_only else ""))

    # phase 2: corpus passes and final writes
    written = []
    for run in reversed(runs):  # the last model of phase 1 is still loaded
        cov, n_tokens = run.run_corpus()
        attrs = {**(run.final_provenance if run.final_provenance is not None else run.provenance()),
                 "complete": False}
        run.unload()  # (final_cov unloaded an extracting model already; an imported covariance's goes here)
        keys, known, p_true, token_ids, tokens = results[run.model_id]
        sel = np.asarray(selected)
        ds = model_dataset(keys[:, sel], cov, n_tokens, known[sel], p_true[sel], run.layers,
                           [candidates[i].case_id for i in selected], token_ids[sel], tokens[sel])
        del cov  # the dataset holds it (lazily: each block is unpacked when the write stores it)
        ds.attrs = attrs
        path = layout.model_path(run.model_id)
        # a complete model being overwritten stays readable until the new one replaces it whole;
        # a new model is written in place, hidden from readers until it is committed
        replacing = path in [layout.model_path(m) for m in store.model_ids(complete_only=True)]
        run.check_lease()
        write_model(store, commit.staged(path) if replacing else path, ds)
        failpoints.hit("final_write")
        if replacing:
            store.set_attrs(commit.staged(path), {"complete": True})
        run.check_lease()
        commit.commit(store, run.commit_ops(staged=replacing))  # complete, checkpoint gone, consolidated
        run.unload()
        log(f"[{run.model_id}] complete: keys {tuple(ds[layout.KEY].shape)}, cov {tuple(ds['cov'].shape)}, "
            f"n_tokens {int(n_tokens.min())}", opts.storage_options)
        written.append(run.model_id)
    return written

