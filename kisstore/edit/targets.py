"""Target values ``v* = W k* + δ`` for an edit: ``direct`` (a cheap theory check) or ``rome``.

``rome`` follows ROME's recipe (Meng et al. 2022, §3.1, "computing v*"), written here from
the paper's description: a vector δ is added to the down-projection's output at the key's
token (the store's ``token_position``; ROME's is the subject's last token) and optimised
with Adam to make ``target_new`` likely after the prompt (also behind a few neutral
prefixes), while a KL term keeps the model's next-token distribution at the key's token of
"{subject} is a" close to the unedited one, a weight decay keeps δ small relative to the
current value, and its norm is clamped. The loss, as in ROME:

    L(δ) = NLL(target_new) + kl_factor · KL(p_δ ‖ p_0) + weight_decay · |δ| / |W k*|²

with ``p_δ`` the edited and ``p_0`` the unedited distribution. As in ROME's loop, ``steps``
counts evaluations of L: the last one (or the first below ``stop_loss``) ends the loop
without another update, so at most ``steps − 1`` Adam updates are made and the reported NLL
is that of the returned δ; after each update |δ| is clamped to ``clamp_norm`` · |W k*|.

Where this differs from ROME's code: the prefixes are a fixed list rather than sampled from
the model, and the edit's key k* is the store's key of the bare prompt (the one whose
interference the store predicts), not an average over prefixed prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kisstore.data.items import Item
from kisstore.edit.evaluate import encode_with_target, logits_at
from kisstore.extract.batching import pad_right

PREFIXES = ("", "Here is a fact. ", "I read in a book that ")
KL_PROMPT = "{} is a"


@dataclass(frozen=True)
class RomeOptions:
    """Hyper-parameters of the δ optimisation (ROME's defaults for GPT-2 XL where they exist)."""

    steps: int = 20  # evaluations of the loss, as ROME's v_num_grad_steps: at most steps − 1 updates
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0
    stop_loss: float = 0.05  # on the whole loss, as ROME
    prefixes: tuple[str, ...] = PREFIXES


@dataclass
class TargetResult:
    delta: np.ndarray  # (d_model,) float64: v* − W k*
    steps: int  # Adam updates made (0 for direct)
    nll: float  # mean NLL of target_new over the rewriting prompts with the returned δ (nan for direct)
    nll_start: float = float("nan")  # the same with δ = 0


def direct_delta(lm, item: Item, current: np.ndarray, scale: float = 1.0) -> TargetResult:
    """δ along ``U[new] − U[true]`` (rows of the unembedding for the targets' first tokens).

    Its norm is ``scale · |W k*|``. It ignores the final norm and every later layer, so it is
    not an effective edit in general: it serves the interference identity, which holds for
    any v*.
    """
    u = lm.model.get_output_embeddings().weight.detach().to("cpu").double().numpy()
    new = encode_with_target(lm.tokenizer, item, item.target_new)
    true = encode_with_target(lm.tokenizer, item, item.target_true)
    i_new = new.input_ids[new.target_pos[0]] if new.target_pos else new.input_ids[-1]
    i_true = true.input_ids[true.target_pos[0]] if true.target_pos else true.input_ids[-1]
    direction = u[i_new] - (u[i_true] if i_true != i_new else 0.0)
    norm = float(np.linalg.norm(direction)) or 1.0
    return TargetResult(scale * float(np.linalg.norm(current)) * direction / norm, 0, float("nan"))


def rome_delta(lm, module, item: Item, current: np.ndarray, opts: RomeOptions | None = None,
               position: str = "subject_last") -> TargetResult:
    """Optimise δ at the key's token (``position``) so that ``target_new`` follows the prompt.

    ``current`` is ``W k*`` of the model as it is now (edits apply sequentially), used to
    scale the weight decay and the norm clamp. ``position`` must be the store's
    ``token_position``: the edit writes v* at the key the store holds.
    """
    import torch

    opts = opts or RomeOptions()
    tok = lm.tokenizer
    rewrite = [encode_with_target(tok, item, item.target_new, prefix, position) for prefix in opts.prefixes]
    rewrite = [e for e in rewrite if e.target_pos]
    if not rewrite:
        raise ValueError(f"case_id {item.case_id}: target_new {item.target_new!r} has no separate tokens")
    kl_item = Item(item.case_id, KL_PROMPT, item.subject, item.relation_id, "thing", "thing")
    kl = encode_with_target(tok, kl_item, "thing", position=position)
    kl_ids = kl.input_ids[: kl.target_pos[0]] if kl.target_pos else kl.input_ids
    seqs = [e.input_ids for e in rewrite] + [kl_ids]
    key_pos = [e.key_pos for e in rewrite] + [kl.key_pos]
    ids, mask = pad_right(seqs, tok.pad_token_id)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    batch, width = ids.shape
    at_key = torch.zeros(batch, width, 1, device=lm.device)
    at_key[torch.arange(batch), torch.tensor(key_pos)] = 1.0
    # ROME compares the next-token distributions at the key's own token of "{subject} is a"
    n_kl_row, kl_pos = len(rewrite), kl.key_pos

    delta = torch.zeros(current.shape[0], device=lm.device, dtype=torch.float32, requires_grad=True)
    scale = float(np.linalg.norm(current)) or 1.0

    def add_delta(_module, _args, out):
        shaped = out.reshape(batch, width, -1)
        return (shaped + at_key.to(shaped.dtype) * delta.to(shaped.dtype)).reshape(out.shape)

    wanted = sorted({t - 1 for e in rewrite for t in e.target_pos} | {kl_pos})
    column = {p: c for c, p in enumerate(wanted)}

    def forward():
        logits = logits_at(lm.model, ids, mask, wanted).float()
        nll = []
        for r, e in enumerate(rewrite):
            pred = torch.log_softmax(logits[r, [column[t - 1] for t in e.target_pos]], -1)
            nll.append(-pred.gather(-1, ids[r, e.target_pos][:, None]).mean())
        return torch.stack(nll).mean(), torch.log_softmax(logits[n_kl_row, column[kl_pos]], -1)

    params = list(lm.model.parameters())
    flags = [p.requires_grad for p in params]
    handle = module.register_forward_hook(add_delta)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            _, ref = forward()  # δ = 0: the current model's prediction after "{subject} is a"
        optim = torch.optim.Adam([delta], lr=opts.lr)
        updates, nll_value, nll_start = 0, float("nan"), float("nan")
        for evaluation in range(1, opts.steps + 1):
            optim.zero_grad()
            with torch.enable_grad():
                nll, logp = forward()
                kl_term = torch.sum(logp.exp() * (logp - ref))  # KL(edited ‖ unedited)
                decay = delta.norm() / scale**2  # ROME's form: the norm (not squared) over |W k*|²
                loss = nll + opts.kl_factor * kl_term + opts.weight_decay * decay
                nll_value = float(nll.detach())  # of the current δ, the one returned if the loop ends here
                if evaluation == 1:
                    nll_start = nll_value
                if float(loss.detach()) < opts.stop_loss or evaluation == opts.steps:
                    break  # as ROME: the last evaluation makes no update
                loss.backward()
            optim.step()
            updates += 1
            with torch.no_grad():
                limit = opts.clamp_norm * scale
                norm = float(delta.norm())
                if norm > limit:
                    delta.mul_(limit / norm)
    finally:
        handle.remove()
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return TargetResult(delta.detach().cpu().double().numpy(), updates, nll_value, nll_start)
