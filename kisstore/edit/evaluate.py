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


def greedy_generations(lm, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations (the new text only) of each prompt, one prompt at a time (no padding)."""
    import torch

    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for text in prompts:
        ids = torch.tensor([tok(text, add_special_tokens=True)["input_ids"]], device=lm.device)
        with torch.inference_mode():
            gen = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad)
        out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def _prompt_item(case_id: int, text: str, item: Item) -> Item:
    """A whole prompt text as an Item (the text is its own "subject") scored on ``item``'s targets."""
    return Item(case_id, "{}", text, item.relation_id, item.target_true, item.target_new)


class CounterFactEvaluator:
    """CounterFact's evaluation of the edited facts at chosen steps (ROME/MEMIT's metrics).

    At step 0 every edited fact is scored (the unedited model: the baseline); at a later step
    the facts edited so far. Prompts come from ``prompts`` (by case_id); a fact without them
    gets NaN there. Fluency is measured on a fixed panel of generation prompts (the first
    generation prompt of each of the first ``fluency_prompts`` edited facts that have one), so
    its values are comparable across steps.
    """

    def __init__(self, lm, edited: Sequence[Item], prompts, steps: Sequence[int], *, neighborhood_max: int = 10,
                 fluency_prompts: int = 4, generation_tokens: int = 40, batch_tokens: int = 2048):
        from kisstore.edit import metrics as m

        self.lm, self.edited, self.steps = lm, list(edited), list(steps)
        self.source = prompts.source
        self.generation_tokens = generation_tokens
        got = [prompts.prompts.get(it.case_id, m.CounterFactPrompts()) for it in self.edited]
        self.paraphrase = m.pad_prompts([g.paraphrase for g in got])
        self.neighborhood = m.pad_prompts([g.neighborhood for g in got], neighborhood_max)
        self.generation = [g.generation[0] for g in got if g.generation][:fluency_prompts] or [""]
        n, s = len(self.edited), len(self.steps)
        self.rewrite = FactProbe(lm, self.edited, batch_tokens=batch_tokens)
        self._probes = {}
        for name, table in (("paraphrase", self.paraphrase), ("neighborhood", self.neighborhood)):
            cells = [(r, c) for r in range(n) for c in range(table.shape[1]) if table[r, c]]
            items = [_prompt_item(self.edited[r].case_id, table[r, c], self.edited[r]) for r, c in cells]
            self._probes[name] = (cells, FactProbe(lm, items, batch_tokens=batch_tokens) if items else None)
        self.p = {f"{kind}_{t}": np.full((s, n) + (() if kind == "rewrite" else (table.shape[1],)), np.nan)
                  for kind, table in (("rewrite", None), ("paraphrase", self.paraphrase),
                                      ("neighborhood", self.neighborhood)) for t in ("p_true", "p_new")}
        self.texts = np.full((s, len(self.generation)), "", dtype=object)
        self.entropy = np.full((s, len(self.generation)), np.nan)

    def due(self, step: int) -> bool:
        return step in self.steps

    def evaluate(self, step: int, n_done: int | None = None) -> None:
        """Score the edited facts (the first ``n_done``, by default ``step``: those edited by then;
        all at step 0) and generate the panel. A batched method edits several facts a step."""
        from kisstore.edit.metrics import fluency

        e = self.steps.index(step)
        done = step if n_done is None else n_done
        rows = list(range(len(self.edited) if step == 0 else min(done, len(self.edited))))
        s = self.rewrite.score(rows)
        self.p["rewrite_p_true"][e, rows], self.p["rewrite_p_new"][e, rows] = s.p_true[rows], s.p_new[rows]
        wanted = set(rows)
        for name, (cells, probe) in self._probes.items():
            chosen = [i for i, (r, _c) in enumerate(cells) if r in wanted]
            if probe is None or not chosen:
                continue
            s = probe.score(chosen)
            for i in chosen:
                r, c = cells[i]
                self.p[f"{name}_p_true"][e, r, c], self.p[f"{name}_p_new"][e, r, c] = s.p_true[i], s.p_new[i]
        if any(self.generation):
            self.texts[e] = greedy_generations(self.lm, self.generation, self.generation_tokens)
            self.entropy[e] = [fluency(t) for t in self.texts[e]]

    def state(self) -> dict[str, np.ndarray]:
        """Everything evaluated so far (for a run's checkpoint): the probabilities and the panel."""
        return {**{k: v.copy() for k, v in self.p.items()}, "generation_text": self.texts.copy(),
                "generation_entropy": self.entropy.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`state` (a resumed run)."""
        for k in self.p:
            self.p[k] = np.array(state[k], dtype=np.float64)
        self.texts = np.array(state["generation_text"], dtype=object)
        self.entropy = np.array(state["generation_entropy"], dtype=np.float64)

    def dataset(self):
        """The arrays on (eval_step, edit[, paraphrase | neighborhood | generation]), with summaries."""
        import xarray as xr

        from kisstore.edit.metrics import counterfact_summary

        p = self.p
        summary = [counterfact_summary(p["rewrite_p_true"][e], p["rewrite_p_new"][e], p["paraphrase_p_true"][e],
                                       p["paraphrase_p_new"][e], p["neighborhood_p_true"][e],
                                       p["neighborhood_p_new"][e], self.entropy[e]) for e in range(len(self.steps))]
        ds = xr.Dataset(coords={
            "eval_step": np.asarray(self.steps, dtype=np.int64),
            "edit": np.array([it.case_id for it in self.edited], dtype=np.int64),
            "paraphrase_prompt": (("edit", "paraphrase"), self.paraphrase),
            "neighborhood_prompt": (("edit", "neighborhood"), self.neighborhood),
            "generation_prompt": ("generation", np.array(self.generation, dtype=object)),
        })
        what = {"rewrite": "the edited prompt", "paraphrase": "its paraphrase prompts",
                "neighborhood": "its neighborhood prompts (other subjects)"}
        for key, values in p.items():
            kind, target = key.split("_", 1)
            dims = ("eval_step", "edit") + (() if kind == "rewrite" else (kind,))
            ds[key] = (dims, values, {"long_name": f"{target.replace('_', '(target_')}) on {what[kind]}",
                                      "units": "probability"})
        ds["generation_text"] = (("eval_step", "generation"), self.texts,
                                 {"long_name": f"greedy continuation ({self.generation_tokens} new tokens)"})
        ds["generation_entropy"] = (("eval_step", "generation"), self.entropy,
                                    {"long_name": "weighted bi/tri-gram entropy of the generation (ROME's fluency)",
                                     "units": "bits"})
        longs = {"efficacy_score": ("share of edited facts with p(new) > p(true) on the edited prompt", "1"),
                 "efficacy_magnitude": ("mean p(new) − p(true) on the edited prompt", "probability"),
                 "paraphrase_score": ("share with p(new) > p(true) on paraphrase prompts", "1"),
                 "paraphrase_magnitude": ("mean p(new) − p(true) on paraphrase prompts", "probability"),
                 "neighborhood_score": ("share with p(true) > p(new) on neighborhood prompts", "1"),
                 "neighborhood_magnitude": ("mean p(true) − p(new) on neighborhood prompts", "probability"),
                 "fluency": ("mean generation entropy over the panel (ROME's n-gram entropy)", "bits")}
        for key, (long_name, units) in longs.items():
            values = np.array([row[key] for row in summary])
            attrs = {"long_name": long_name, "units": units}
            if not np.isfinite(values).any():
                attrs["missing"] = f"no evaluated fact has the prompts for it (prompts: {self.source})"
            ds[key] = ("eval_step", values, attrs)
        ds.attrs.update({
            "counterfact_prompts": self.source,
            "facts_without_paraphrase_prompts": int(sum(not any(r) for r in self.paraphrase)),
            "facts_without_neighborhood_prompts": int(sum(not any(r) for r in self.neighborhood)),
            "generation_tokens": self.generation_tokens,
            "eval_scope": "step 0: every edited fact (unedited model); step s: the facts edited at steps ≤ s",
        })
        return ds


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
