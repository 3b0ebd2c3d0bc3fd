"""The item pass: keys at every hooked layer, and whether the model knows each fact."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kisstore import failpoints
from kisstore.data.items import Item
from kisstore.extract.batching import pad_right, token_budget_batches
from kisstore.extract.hooks import key_hooks
from kisstore.extract.positions import encode_item


@dataclass
class ItemPass:
    keys: np.ndarray  # (layer, item, d_ff) float32
    known: np.ndarray  # (item,) bool
    p_true: np.ndarray  # (item,) float32


def key_tokens(tokenizer, items: Sequence[Item], position: str = "subject_last") -> tuple[np.ndarray, np.ndarray]:
    """The token at each item's key position: ids (item,) int64 and their decoded text (item,) object.

    Tokenisation only (no forward pass), the same encoding as the item pass. Two keys on the
    same token id share the token's embedding at layer 0: their interference is lexical."""
    ids = []
    for it in items:
        enc = encode_item(tokenizer, it, position)
        ids.append(int(enc.input_ids[enc.key_pos]))
    text = np.array([tokenizer.decode([i]) for i in ids], dtype=object)
    return np.asarray(ids, dtype=np.int64), text


def item_pass(
    lm,
    items: Sequence[Item],
    layers: Sequence[int],
    *,
    position: str = "subject_last",
    batch_tokens: int = 2048,
    progress: bool = True,
) -> ItemPass:
    """One batched, teacher-forced forward pass per batch of items over ``prompt + target_true``.

    The causal mask keeps the key (a prompt position) independent of the appended target,
    so the same pass yields the keys, ``known`` (greedy argmax reproduces every target
    token) and ``p_true`` (probability of the first target token). Items are batched in order
    of length (less padding), and the LM head runs only on the (item, position) pairs that
    predict a target token (:func:`pair_logits`), not on every position: with a 49k-token
    vocabulary the full logits of a 2048-token batch are 400 MB, the logits of the positions
    any item of the batch needs (what ``logits_to_keep`` gives) ~300 MB, those of the pairs ~50 MB.
    """
    import torch
    from tqdm.auto import tqdm

    enc = [encode_item(lm.tokenizer, it, position) for it in items]
    n, d = len(items), lm.d_ff
    keys = np.zeros((len(layers), n, d), dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    p_true = np.full(n, np.nan, dtype=np.float32)
    row = {layer: r for r, layer in enumerate(layers)}
    pad = lm.tokenizer.pad_token_id
    order = sorted(range(n), key=lambda i: len(enc[i].input_ids))  # stable: ties keep item order
    bar = tqdm(total=n, desc=f"items {lm.source.name}", unit="item", disable=not progress)
    for chunk in token_budget_batches([len(enc[i].input_ids) for i in order], batch_tokens):
        group = [order[j] for j in chunk]
        ids, mask = pad_right([enc[i].input_ids for i in group], pad)
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        pos = torch.tensor([enc[i].key_pos for i in group], device=lm.device)
        batch_rows = torch.arange(len(group), device=lm.device)
        # the (row, position) pairs whose next token is a target token: the LM head runs on these only
        pairs = [(r, t - 1) for r, i in enumerate(group) for t in enc[i].target_pos]
        at = {pair: c for c, pair in enumerate(pairs)}

        def on_key(layer, x, _g=group, _p=pos, _r=batch_rows, _shape=ids.shape):
            x = x.reshape(*_shape, -1)  # some models (OPT) flatten (batch, seq) before the MLP
            keys[row[layer], _g] = x[_r, _p].float().cpu().numpy()

        with torch.inference_mode(), key_hooks(lm.model, lm.key_site, layers, on_key):
            logits = pair_logits(lm.model, ids, mask, pairs)
        for r, i in enumerate(group):
            tp = enc[i].target_pos
            if not tp:
                continue
            tgt = ids[r, tp]
            pred = logits[[at[(r, t - 1)] for t in tp]]
            known[i] = bool((pred.argmax(-1) == tgt).all())
            p_true[i] = float(torch.softmax(pred[0].float(), -1)[tgt[0]])
        del logits
        bar.update(len(group))
        failpoints.hit("item_batch")
    bar.close()
    return ItemPass(keys, known, p_true)


def pair_logits(model, ids, mask, pairs: list[tuple[int, int]]):
    """Logits (len(pairs), vocab) at the given (batch row, sequence position) pairs.

    The LM head (the model's output embeddings) gets the final hidden states of these pairs
    only, through a pre-hook that picks them out of its input, so the logits of a batch are
    pairs × vocab (a few hundred rows), not batch × positions × vocab; whatever the model applies
    after the head (soft-capping, scaling) is element-wise and runs on them as it is. A model
    whose head is not called that way (no output embeddings, or a forward that bypasses them)
    gets its full logits, then indexed.
    """
    import torch

    rows = torch.tensor([r for r, _ in pairs] or [0], dtype=torch.long, device=ids.device)
    cols = torch.tensor([c for _, c in pairs] or [0], dtype=torch.long, device=ids.device)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    picked = []

    def pick(_module, args):
        h = args[0]
        if picked or h.dim() != 3 or h.shape[:2] != ids.shape:
            return None  # not the final hidden states of this batch: leave the call alone
        picked.append(True)
        return (h[rows, cols].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pick) if isinstance(head, torch.nn.Module) else None
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        if handle is not None:
            handle.remove()
    if picked and logits.shape[:2] == (1, len(rows)):
        return logits[0]
    return logits[rows, cols]  # the head was not reached through the hook: full logits
