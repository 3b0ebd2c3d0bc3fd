"""The model's behaviour on facts: probability of ``target_true``/``target_new`` and top-1 accuracy.

A target's probability is that of its whole token sequence after the prompt (teacher forced,
the product over its tokens); top-1 means greedy decoding reproduces every token of
``target_true`` — the store's ``known`` criterion, so every known fact starts at 1.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kisstore.data.items import Item
from kisstore.extract.batching import pad_right, token_budget_batches
from kisstore.extract.positions import EncodedItem, encode_item


def encode_with_target(tokenizer, item: Item, target: str, prefix: str = "",
                       position: str = "subject_last") -> EncodedItem:
    """Tokenise ``prefix + prompt + " " + target``: the key's token (``position``, as a store's
    ``token_position``) and the target's tokens."""
    probe = replace(item, prompt=prefix + item.prompt, target_true=target)
    return encode_item(tokenizer, probe, position)


def logits_at(model, ids, mask, positions: Sequence[int]):
    """Logits (batch, len(positions), vocab) at the given sequence positions only.

    The LM head over a 50k-token vocabulary costs a large share of a short forward pass;
    models that accept ``logits_to_keep`` skip it everywhere else.
    """
    import torch

    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        keep = torch.tensor(list(positions), dtype=torch.long, device=ids.device)
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    return model(input_ids=ids, attention_mask=mask).logits[:, list(positions)]


@dataclass
class FactScores:
    p_true: np.ndarray  # (item,) probability of the whole target_true (NaN where not scored)
    p_new: np.ndarray  # (item,) probability of the whole target_new (NaN where not scored)
    top1: np.ndarray  # (item,) greedy decoding reproduces target_true


class FactProbe:
    """Encodes a fixed set of facts once; :meth:`score` runs (a subset of) them through the model."""

    def __init__(self, lm, items: Sequence[Item], batch_tokens: int = 2048, position: str = "subject_last"):
        self.lm = lm
        self.batch_tokens = batch_tokens
        # prompt prefixes up to the key, at the store's token_position (outputs() runs them every step)
        keyed = (encode_item(lm.tokenizer, it, position) for it in items)
        self.keyed = [e.input_ids[: e.key_pos + 1] for e in keyed]  # causal: nothing later matters
        self.true = [encode_with_target(lm.tokenizer, it, it.target_true) for it in items]
        self.new = [encode_with_target(lm.tokenizer, it, it.target_new) for it in items]
        self.n = len(items)

    def outputs(self, module) -> np.ndarray:
        """``module``'s output at each fact's key position (the store's token_position), live.

        (item, d_out) float64. The forward stops after ``module``. For the edited down
        projection this is ``W k`` as the model computes it, in its own precision, with the keys
        of this forward: the edit run's independent measurement of each fact's value.
        """
        import torch

        from kisstore.extract.hooks import StopForward

        rows: dict[int, np.ndarray] = {}
        pad = self.lm.tokenizer.pad_token_id
        seqs = self.keyed
        state = {}

        def grab(_module, _args, y):
            y = y.reshape(*state["shape"], -1)  # some models (OPT) flatten (batch, seq)
            state["rows"] = y[state["batch"], state["pos"]].double().cpu().numpy()
            raise StopForward

        handle = module.register_forward_hook(grab)
        try:
            for group in token_budget_batches([len(s) for s in seqs], self.batch_tokens):
                ids, mask = pad_right([seqs[g] for g in group], pad)
                state.update(shape=tuple(ids.shape), batch=torch.arange(len(group)),
                             pos=torch.tensor([len(seqs[g]) - 1 for g in group]))
                try:
                    with torch.inference_mode():
                        self.lm.model(input_ids=ids.to(self.lm.device), attention_mask=mask.to(self.lm.device))
                except StopForward:
                    pass
                rows.update(zip(group, state["rows"], strict=True))
        finally:
            handle.remove()
        return np.stack([rows[i] for i in range(self.n)])

    def score(self, indices: Sequence[int] | None = None, new_for: Sequence[int] | None = None) -> FactScores:
        """Score ``indices`` (default: all) on target_true, and ``new_for`` (default: the same) on target_new."""
        import torch

        indices = range(self.n) if indices is None else indices
        new_for = indices if new_for is None else new_for
        jobs = [(i, False) for i in indices] + [(i, True) for i in new_for]
        seqs = [self.new[i] if is_new else self.true[i] for i, is_new in jobs]
        logp = np.full(len(jobs), np.nan)
        greedy = np.zeros(len(jobs), dtype=bool)
        pad = self.lm.tokenizer.pad_token_id
        for group in token_budget_batches([len(s.input_ids) for s in seqs], self.batch_tokens):
            ids, mask = pad_right([seqs[g].input_ids for g in group], pad)
            ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
            wanted = sorted({t - 1 for g in group for t in seqs[g].target_pos})
            if not wanted:
                continue
            column = {p: c for c, p in enumerate(wanted)}
            with torch.inference_mode():
                logits = logits_at(self.lm.model, ids, mask, wanted)
            for r, g in enumerate(group):
                tp = seqs[g].target_pos
                if not tp:
                    continue
                pred = logits[r, [column[t - 1] for t in tp]].double()
                tgt = ids[r, tp].to(pred.device)
                logp[g] = float(torch.log_softmax(pred, -1).gather(-1, tgt[:, None]).sum())
                greedy[g] = bool((pred.argmax(-1) == tgt).all())
        out = FactScores(np.full(self.n, np.nan), np.full(self.n, np.nan), np.zeros(self.n, dtype=bool))
        for (i, is_new), lp, gr in zip(jobs, logp, greedy, strict=True):
            if is_new:
                out.p_new[i] = np.exp(lp)
            else:
                out.p_true[i], out.top1[i] = np.exp(lp), gr
        return out


def capture_at_keys(probe: FactProbe, inputs=(), outputs=(), indices: Sequence[int] | None = None
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The inputs of ``inputs`` and the outputs of ``outputs`` (modules) at each fact's key position,
    live, in one forward per token batch that stops once every module has been seen.

    Returns (one (len(indices), d) float64 array per input module, one per output module). A
    module whose output is a tuple (a transformer block) gives its first element, the
    residual stream. This is what MEMIT reads: the keys ``k`` at each edited layer and the hidden
    state at its last layer, after the edits so far.
    """
    import torch

    from kisstore.extract.hooks import StopForward

    indices = list(range(probe.n)) if indices is None else list(indices)
    seqs = [probe.keyed[i] for i in indices]
    pad = probe.lm.tokenizer.pad_token_id
    n_in, n_out = len(inputs), len(outputs)
    found_in: list[dict[int, np.ndarray]] = [{} for _ in inputs]
    found_out: list[dict[int, np.ndarray]] = [{} for _ in outputs]
    state: dict = {}

    def take(y):
        y = y[0] if isinstance(y, tuple) else y
        y = y.reshape(*state["shape"], -1)
        return y[state["batch"], state["pos"]].double().cpu().numpy()

    def seen():
        state["left"] -= 1
        if state["left"] == 0:
            raise StopForward

    def pre(slot):
        def hook(_module, args):
            state["in"][slot] = take(args[0])
            seen()
        return hook

    def post(slot):
        def hook(_module, _args, y):
            state["out"][slot] = take(y)
            seen()
        return hook

    handles = [m.register_forward_pre_hook(pre(s)) for s, m in enumerate(inputs)]
    handles += [m.register_forward_hook(post(s)) for s, m in enumerate(outputs)]
    try:
        for group in token_budget_batches([len(s) for s in seqs], probe.batch_tokens):
            ids, mask = pad_right([seqs[g] for g in group], pad)
            state.update(shape=tuple(ids.shape), batch=torch.arange(len(group)),
                         pos=torch.tensor([len(seqs[g]) - 1 for g in group]), left=n_in + n_out,
                         **{"in": [None] * n_in, "out": [None] * n_out})
            try:
                with torch.inference_mode():
                    probe.lm.model(input_ids=ids.to(probe.lm.device), attention_mask=mask.to(probe.lm.device))
            except StopForward:
                pass
            for slot in range(n_in):
                found_in[slot].update(zip(group, state["in"][slot], strict=True))
            for slot in range(n_out):
                found_out[slot].update(zip(group, state["out"][slot], strict=True))
    finally:
        for h in handles:
            h.remove()
    order = range(len(indices))
    return ([np.stack([f[i] for i in order]) for f in found_in],
            [np.stack([f[i] for i in order]) for f in found_out])
