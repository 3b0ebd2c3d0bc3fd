"""Group variable-length sequences into padded batches under a token budget."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


def token_budget_batches(lengths: Iterable[int], batch_tokens: int) -> Iterator[list[int]]:
    """Consecutive index groups whose padded size (count × longest) stays within the budget.

    Greedy and order-preserving, so restarting from any group boundary reproduces the
    same later groups (what resuming needs).
    """
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        new_longest = max(longest, n)
        if group and new_longest * (len(group) + 1) > batch_tokens:
            yield group
            group, new_longest = [], n
        group.append(i)
        longest = new_longest
    if group:
        yield group


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) as torch tensors, padded on the right."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask
