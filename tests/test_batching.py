"""Corpus batching: the padding-aware cut against brute force over every cut, and the greedy one."""

from __future__ import annotations

import itertools
import random

import pytest

from kisstore.extract.batching import padding_aware_batches, token_budget_batches


def _cost(groups, lengths, cost) -> int:
    return sum(len(g) * max(lengths[i] for i in g) + cost for g in groups)


def _fits(group, lengths, budget) -> bool:
    return len(group) == 1 or len(group) * max(lengths[i] for i in group) <= budget


def _all_cuts(n: int):
    """Every split of 0…n-1 into consecutive groups (2^(n-1) of them)."""
    for bits in itertools.product((False, True), repeat=n - 1):
        groups, cur = [], [0]
        for i, cut in enumerate(bits, start=1):
            if cut:
                groups.append(cur)
                cur = []
            cur.append(i)
        yield groups + [cur]


@pytest.mark.parametrize("seed", range(40))
def test_padding_aware_cut_is_the_cheapest_valid_cut(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 11)
    lengths = sorted(rng.randint(1, 300) for _ in range(n))
    if seed % 4 == 0:
        lengths = [rng.randint(1, 300) for _ in range(n)]  # unsorted input is allowed too
    budget = rng.choice([64, 256, 600, 1024])
    cost = rng.choice([0, 16, budget // 8])
    groups = padding_aware_batches(lengths, budget, cost)
    assert [i for g in groups for i in g] == list(range(n))  # consecutive, in order, each once
    assert all(_fits(g, lengths, budget) for g in groups)
    best = min(_cost(c, lengths, cost) for c in _all_cuts(n) if all(_fits(g, lengths, budget) for g in c))
    assert _cost(groups, lengths, cost) == best


def test_padding_aware_cut_never_costs_more_than_the_greedy_one():
    rng = random.Random(7)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 1024) for _ in range(rng.randint(1, 64)))
        greedy = list(token_budget_batches(lengths, 4096))
        ours = padding_aware_batches(lengths, 4096)
        assert _cost(ours, lengths, 512) <= _cost(greedy, lengths, 512)


def test_short_sequences_are_kept_apart_from_long_ones():
    lengths = [10] * 3 + [500] * 8  # greedy: 3 short and 5 long (8 × 500 ≤ 4096), then 3 long
    groups = padding_aware_batches(lengths, 4096)
    assert all(len({lengths[i] for i in g}) == 1 for g in groups)
    mixed = list(token_budget_batches(lengths, 4096))
    assert any(len({lengths[i] for i in g}) == 2 for g in mixed)  # the greedy cut pads the short ones


def test_a_sequence_longer_than_the_budget_is_its_own_batch():
    assert padding_aware_batches([3, 5000, 6000], 4096) == [[0], [1], [2]]
    assert padding_aware_batches([], 4096) == []
