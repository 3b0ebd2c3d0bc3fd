"""The corpus pass: every hooked layer's Σ k kᵀ in one streamed pass, no LM head."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from kisstore import failpoints
from kisstore.data.corpus import Corpus
from kisstore.errors import InputError
from kisstore.extract.accumulate import SecondMoment
from kisstore.extract.attention import dense_kv_attention
from kisstore.extract.batching import pad_right, padding_aware_batches
from kisstore.extract.hooks import StopForward, compiled_layers, key_hooks

WINDOW = 64  # documents sorted by length together; also the unit of resuming and sharding


@dataclass
class Batch:
    input_ids: object
    attention_mask: object
    docs_end: int | None  # documents consumed after this batch, where it ends a window
    tokens: int  # non-padding tokens in the batch


def corpus_batches(
    tokenizer, corpus: Corpus, *, max_length: int, batch_tokens: int,
    token_cap: int | None, skip_docs: int = 0, tokens_before: int = 0, window: int = WINDOW,
    max_docs: int | None = None,
) -> Iterator[Batch]:
    """Tokenise documents (truncated to ``max_length``) into right-padded token-budget batches.

    Whole documents are taken until ``token_cap`` tokens are reached, so ``n ≥ cap``.
    Documents are read in windows of ``window``; inside a window they are sorted by length
    and cut into the batches that pad least (``padding_aware_batches``). Only a window's last batch carries
    ``docs_end`` (a resumable point), so a resumed run reproduces the later batches exactly.
    ``max_docs`` stops after that many documents (a shard of the corpus).
    """
    seen = tokens_before
    docs = corpus.documents()
    consumed = 0
    for _ in range(skip_docs):
        if next(docs, None) is None:
            return
        consumed += 1
    exhausted = False
    while not exhausted:
        seqs: list[list[int]] = []
        read = 0
        while read < window:
            if max_docs is not None and consumed + read - skip_docs >= max_docs:
                exhausted = True
                break
            if token_cap is not None and seen >= token_cap:
                exhausted = True
                break
            text = next(docs, None)
            if text is None:
                exhausted = True
                break
            read += 1
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"] if text.strip() else []
            if ids:
                seqs.append(ids)
                seen += len(ids)
        consumed += read
        if not seqs:
            continue
        seqs.sort(key=len)
        groups = padding_aware_batches([len(s) for s in seqs], batch_tokens)
        for gi, group in enumerate(groups):
            chunk = [seqs[i] for i in group]
            yield _make(chunk, tokenizer, consumed if gi == len(groups) - 1 else None)


def count_documents(tokenizer, corpus: Corpus, *, max_length: int, token_cap: int | None) -> int:
    """How many documents ``corpus_batches`` would read under ``token_cap`` (same rule)."""
    seen = 0
    n = 0
    for text in corpus.documents():
        if token_cap is not None and seen >= token_cap:
            break
        n += 1
        if text.strip():
            seen += len(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
    return n


def _make(seqs: list[list[int]], tokenizer, docs_end: int | None) -> Batch:
    ids, mask = pad_right(seqs, tokenizer.pad_token_id)
    return Batch(ids, mask, docs_end, sum(len(s) for s in seqs))


def accumulate(
    lm,
    layers: Sequence[int],
    batches: Iterator[Batch],
    moments: dict[int, SecondMoment],
    *,
    on_progress: Callable[[Batch], None] | None = None,
    checkpoint: Callable[[Batch], None] | None = None,
    checkpoint_every: float = 300.0,
    cpu_kernels: str = "auto",
    compile: bool = False,
) -> None:
    """Run the body of the model on each batch, adding every non-padding key into ``moments``.

    The forward stops inside the deepest hooked layer's MLP; the LM head never runs. On CPU,
    ``cpu_kernels`` (``kisstore.extract.cpu_kernels``) picks the float32 kernels of the model's
    linear layers. The accumulators are flushed into their float64 sums at every resumable
    point (the last batch of a document window), before any checkpoint. ``batches`` is closed
    when the pass ends, by an error too (a prefetching reader thread stops with it).

    With ``compile`` the decoder layers run through ``torch.compile`` (``hooks.compiled_layers``):
    their element-wise work (norms, rotary embeddings, activations, residual adds) is fused into
    few kernels; the keys are the eager ones to float32 rounding.
    """
    import torch

    from kisstore.extract.cpu_kernels import linears_on_onednn, onednn_linears

    body = lm.model.base_model if hasattr(lm.model, "base_model") else lm.model
    last_ckpt = time.monotonic()
    state = {}

    def on_key(layer, x):
        flat = x.reshape(-1, x.shape[-1])  # some models (OPT) flatten (batch, seq) before the MLP
        rows = state["rows"]
        moments[layer].add(flat if rows is None else flat.index_select(0, rows))  # (tokens, d_ff), padding dropped

    fast = linears_on_onednn(cpu_kernels, lm.device, compile)
    with (contextlib.closing(batches) if hasattr(batches, "close") else contextlib.nullcontext(),
          torch.inference_mode(), onednn_linears(lm.model, enabled=fast),
          dense_kv_attention(),  # no mask below: float32 grouped-query attention needs this for a fused kernel
          compiled_layers(lm.model, lm.module_template, layers) if compile else contextlib.nullcontext(),
          key_hooks(lm.model, lm.module_template, layers, on_key, stop_after_last=True, via_layer=compile)):
        for batch in batches:
            ids = batch.input_ids.to(lm.device)
            # the non-padding rows, found once per batch on the host (a boolean mask index on the
            # device would cost a nonzero() and a device sync per layer); no copy when nothing is padded
            keep = batch.attention_mask.reshape(-1).bool()
            state["rows"] = None if bool(keep.all()) else keep.nonzero().squeeze(1).to(lm.device)
            try:
                # No attention mask: the batch is right-padded and attention is causal, so no real
                # token attends to a padding position and the real tokens' keys are the same
                # without it (tests/test_extract.py checks them against unpadded forwards); without
                # a mask, attention takes its causal fast path (skips the upper triangle).
                body(input_ids=ids, use_cache=False)
            except StopForward:
                pass
            if batch.docs_end is not None:
                for m in moments.values():
                    m.flush()
            failpoints.hit("corpus_batch")
            if on_progress:
                on_progress(batch)
            due = time.monotonic() - last_ckpt >= checkpoint_every
            if checkpoint and batch.docs_end is not None and due:
                checkpoint(batch)
                last_ckpt = time.monotonic()


def check_count(count: int, d: int, corpus: str) -> None:
    if count == 0:
        raise InputError(f"corpus {corpus!r} yielded no tokens")
    if count <= d:
        raise InputError(
            f"corpus {corpus!r} gave {count} token vectors, not more than the key dimension {d}: "
            "the covariance would be singular; use more corpus tokens"
        )
