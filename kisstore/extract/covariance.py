"""The corpus pass: every hooked layer's Σ k kᵀ in one streamed pass, no LM head."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kisstore import failpoints
from kisstore.data.corpus import Corpus
from kisstore.errors import InputError
from kisstore.extract.accumulate import SecondMoment
from kisstore.extract.attention import dense_kv_attention
from kisstore.extract.batching import pad_right, padding_aware_batches
from kisstore.extract.hooks import StopForward, compiled_layers, key_hooks

WINDOW = 64  # documents sorted by length together; also the unit of resuming (shards read whole windows)


class CorpusChanged(InputError):
    """The documents a resumed pass skips over are not those its checkpoint was made from."""


class WindowHasher:
    """SHA-256 of each ``window``-document window a pass reads, from document 0 on.

    A window's digest covers its documents' UTF-8 bytes, each with its length, in order (the
    first 32 hex digits are kept). ``expect`` holds the digests a checkpoint recorded: a window
    read now that differs from it raises :class:`CorpusChanged` (the corpus changed under a
    resumed or multi-pass run). Hashing costs far less than tokenizing the same text.
    """

    def __init__(self, expect: Sequence[str] = (), window: int = WINDOW, files: Sequence[str] = ()):
        self.expect = list(expect)
        self.window = window
        self.files = list(files)  # what the checkpoint recorded of a file corpus, for the message
        self.digests: list[str] = []
        self._h = None
        self._n = 0
        self._files_now = ""

    def add(self, text: str, check: bool = True) -> None:
        if self._h is None:
            self._h = hashlib.sha256()
        b = text.encode("utf-8", "surrogatepass")
        self._h.update(len(b).to_bytes(8, "little"))
        self._h.update(b)
        self._n += 1
        if self._n == self.window:
            self.end_window(check)

    def end_window(self, check: bool) -> None:
        """Close the running window (a full one, or the last, partial one)."""
        if self._h is None:
            return
        self.digests.append(self._h.hexdigest()[:32])
        self._h, self._n = None, 0
        i = len(self.digests) - 1
        if check and i < len(self.expect) and self.expect[i] != self.digests[i]:
            raise self.changed(i + 1)

    def finish(self) -> None:
        """At the end of a pass: fewer windows than a finished earlier pass read is a changed corpus."""
        if len(self.digests) < len(self.expect):
            raise self.changed(len(self.expect), f"it now ends after {len(self.digests)} windows")

    def committed(self, docs: int) -> list[str]:
        """The digests to record with a checkpoint at ``docs`` documents: this pass's windows up to
        there (not those a prefetching reader has read past it), then the expected ones beyond."""
        k = -(-docs // self.window)
        out = list(self.expect)
        out[:k] = self.digests[:k]
        return out

    def changed(self, checked: int, detail: str = "") -> CorpusChanged:
        differ = [i for i in range(checked) if i >= len(self.digests) or i >= len(self.expect)
                  or self.digests[i] != self.expect[i]]
        read = f"windows 0–{checked - 1} were" if checked > 1 else "window 0 was"
        if differ:
            a, b = differ[0] * self.window, (differ[0] + 1) * self.window - 1
            what = (f"{len(differ)} of them differ, " if checked > 1 else "it differs, ") + \
                f"from window {differ[0]} (documents {a}–{b})"
        else:
            what = "the same ones"
        extra = "; ".join(x for x in (detail, self.files_detail()) if x)
        return CorpusChanged(
            f"the corpus changed since this run was checkpointed ({read} read before: {what}"
            f"{'; ' + extra if extra else ''}); rerun with --overwrite to start over")

    def files_detail(self) -> str:
        return self._files_now

    def compare_files(self, now: Sequence[Sequence[Any]]) -> None:
        """Name the files added, removed or resized since the checkpoint (a file corpus)."""
        if not self.files:
            return
        old = {str(p): s for p, s in self.files}
        new = {str(p): s for p, s in now}
        parts = []
        if added := [p for p in new if p not in old]:
            parts.append("files added: " + ", ".join(added[:3]) + (" …" if len(added) > 3 else ""))
        if removed := [p for p in old if p not in new]:
            parts.append("files removed: " + ", ".join(removed[:3]) + (" …" if len(removed) > 3 else ""))
        if resized := [p for p in new if p in old and old[p] != new[p]]:
            parts.append("files edited: " + ", ".join(resized[:3]) + (" …" if len(resized) > 3 else ""))
        self._files_now = "; ".join(parts)


def corpus_sha256(windows: Sequence[str]) -> str | None:
    """The corpus fingerprint of a whole pass: SHA-256 of its window digests in order."""
    if not windows:
        return None
    return hashlib.sha256(b"".join(bytes.fromhex(w) for w in windows)).hexdigest()


def open_documents(corpus: Corpus, skip_docs: int = 0, hasher: WindowHasher | None = None, *,
                   ended: bool = False) -> Iterator[str]:
    """The corpus's documents with the first ``skip_docs`` read past (and hashed, then compared
    with the checkpoint's windows: a :class:`CorpusChanged` here, before anything is computed).

    ``ended``: the pass being resumed had stopped at ``skip_docs`` (its corpus ran out): a
    document after them is a changed corpus too. Eager: call it where the error should show."""
    docs = iter(corpus.documents())
    for i in range(skip_docs):
        text = next(docs, None)
        if text is None:
            if hasher is not None:
                hasher.end_window(check=False)
                raise hasher.changed(-(-skip_docs // hasher.window),
                                     f"it now ends after {i} documents, the run had read {skip_docs}")
            return iter(())
        if hasher is not None:
            hasher.add(text, check=False)  # compared all together below, to name every window that differs
    if hasher is None or skip_docs == 0:
        return docs
    hasher.end_window(check=False)  # a partial last window
    k = -(-skip_docs // hasher.window)
    if hasher.expect and hasher.digests[:k] != hasher.expect[:k]:  # none: a checkpoint of an earlier kisstore
        raise hasher.changed(k)
    if ended:
        more = next(docs, None)
        if more is not None:
            raise hasher.changed(k, f"documents were added after the {skip_docs} the run had read")
        return iter(())
    return docs


@dataclass
class Batch:
    input_ids: object
    attention_mask: object
    docs_end: int | None  # documents consumed after this batch, where it ends a window
    tokens: int  # non-padding tokens in the batch
    window: int = -1  # its place in the pass: the window it was formed in (documents // window) …
    part: int = 0  # … and its index among that window's batches (how shards name their bounds)
    minus: object = None  # a sharded pass's cut batch: a mask of the tokens whose products are taken out
                          # again after those of ``attention_mask`` went in (``kisstore.extract.shards``)


def window_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """How one window's documents are batched: indices into ``lengths`` (their token counts, in
    reading order; 0 for a document that tokenizes to nothing), one list per batch.

    Empty documents are dropped, the rest sorted by length (stable) and cut by
    :func:`padding_aware_batches`. ``corpus_batches`` forms its batches with it, and the shard
    planner (``kisstore.extract.shards.plan``) predicts them with it from token counts alone.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: lengths[i])
    groups = padding_aware_batches([lengths[i] for i in order], batch_tokens)
    return [[order[j] for j in g] for g in groups]


def corpus_batches(
    tokenizer, corpus: Corpus, *, max_length: int, batch_tokens: int,
    token_cap: int | None, skip_docs: int = 0, tokens_before: int = 0, window: int = WINDOW,
    max_docs: int | None = None, hasher: WindowHasher | None = None, documents: Iterator[str] | None = None,
) -> Iterator[Batch]:
    """Tokenise documents (truncated to ``max_length``) into right-padded token-budget batches.

    Whole documents are taken until ``token_cap`` tokens are reached, so ``n ≥ cap``.
    Documents are read in windows of ``window``; inside a window they are sorted by length
    and cut into the batches that pad least (``padding_aware_batches``). Only a window's last batch carries
    ``docs_end`` (a resumable point), so a resumed run reproduces the later batches exactly.
    ``max_docs`` stops after that many documents (a shard of the corpus).

    ``hasher`` (a :class:`WindowHasher`) hashes every document read, skipped ones included, and
    raises :class:`CorpusChanged` at a window that differs from the checkpoint's. ``documents``:
    the corpus's documents with the first ``skip_docs`` already read (``open_documents``).
    """
    seen = tokens_before
    docs = documents if documents is not None else open_documents(corpus, skip_docs, hasher)
    consumed = skip_docs
    exhausted = False
    while not exhausted:
        seqs: list[list[int]] = []
        first = consumed  # the window's first document
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
            if hasher is not None:
                hasher.add(text)  # closes (and checks) the window at its 64th document
            ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"] if text.strip() else []
            seqs.append(ids)
            seen += len(ids)
        consumed += read
        if hasher is not None and read < window:
            hasher.end_window(check=True)  # the last, partial window
        groups = window_batches([len(s) for s in seqs], batch_tokens)
        for gi, group in enumerate(groups):
            chunk = [seqs[i] for i in group]
            b = _make(chunk, tokenizer, consumed if gi == len(groups) - 1 else None)
            b.window, b.part = first // window, gi
            yield b


def count_documents(tokenizer, corpus: Corpus, *, max_length: int, token_cap: int | None,
                    hasher: WindowHasher | None = None, lengths: list[int] | None = None) -> int:
    """How many documents ``corpus_batches`` would read under ``token_cap`` (same rule);
    ``hasher`` gets their window digests (unchecked: the caller compares), ``lengths`` each
    document's token count after truncation (what the shard planner balances)."""
    seen = 0
    n = 0
    for text in corpus.documents():
        if token_cap is not None and seen >= token_cap:
            break
        n += 1
        if hasher is not None:
            hasher.add(text, check=False)
        k = len(tokenizer(text, truncation=True, max_length=max_length)["input_ids"]) if text.strip() else 0
        seen += k
        if lengths is not None:
            lengths.append(k)
    if hasher is not None:
        hasher.end_window(check=False)
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
        if state["minus"] is not None:
            moments[layer].add(flat.index_select(0, state["minus"]), sign=-1)

    fast = linears_on_onednn(cpu_kernels, lm.device, compile)
    with (contextlib.closing(batches) if hasattr(batches, "close") else contextlib.nullcontext(),
          torch.inference_mode(), onednn_linears(lm.model, enabled=fast),
          dense_kv_attention(),  # no mask below: float32 grouped-query attention needs this for a fused kernel
          compiled_layers(lm.model, lm.key_site, layers) if compile else contextlib.nullcontext(),
          key_hooks(lm.model, lm.key_site, layers, on_key, stop_after_last=True, via_layer=compile)):
        for batch in batches:
            ids = batch.input_ids.to(lm.device)
            # the non-padding rows, found once per batch on the host (a boolean mask index on the
            # device would cost a nonzero() and a device sync per layer); no copy when nothing is padded
            keep = batch.attention_mask.reshape(-1).bool()
            state["rows"] = None if bool(keep.all()) else keep.nonzero().squeeze(1).to(lm.device)
            state["minus"] = (None if batch.minus is None
                              else batch.minus.reshape(-1).bool().nonzero().squeeze(1).to(lm.device))
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
