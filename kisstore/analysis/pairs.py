"""Which pairs of facts interfere most, and with what: pure numpy functions on one layer's matrices.

A pair (i, j) of an N×N matrix is an off-diagonal entry; for P it is ordered (row i is the
edited fact, column j the fact it disturbs), for a symmetric matrix (whitened cosine) each
unordered pair counts once. Pair sets split the pairs by what the two facts share: the token
at the key position (lexical interference: both keys start from the same embedding), the
subject, or the relation.
"""

from __future__ import annotations

import numpy as np

RANK_BY = ("abs", "signed")
PAIR_SETS = ("all", "same_token", "different_token", "same_subject", "different_subject",
             "same_relation", "different_relation")


def same_label(labels: np.ndarray) -> np.ndarray:
    """(N, N) bool: the two facts carry the same label (token id, subject, relation id)."""
    a = np.asarray(labels)
    return a[:, None] == a[None, :]


def pair_set_masks(same_token: np.ndarray | None, same_subject: np.ndarray,
                   same_relation: np.ndarray) -> np.ndarray:
    """(len(PAIR_SETS), N, N) bool masks of the off-diagonal pairs in each set, PAIR_SETS order.

    Without token ids (``same_token`` None: a store extracted before they were kept) both token
    sets are empty, so their statistics come out NaN rather than wrong."""
    n = same_subject.shape[0]
    off = ~np.eye(n, dtype=bool)
    tok = np.zeros((n, n), dtype=bool) if same_token is None else same_token
    masks = {
        "all": off,
        "same_token": off & tok,
        "different_token": off & ~tok if same_token is not None else np.zeros((n, n), dtype=bool),
        "same_subject": off & same_subject,
        "different_subject": off & ~same_subject,
        "same_relation": off & same_relation,
        "different_relation": off & ~same_relation,
    }
    return np.stack([masks[s] for s in PAIR_SETS])


def rank_pairs(matrix: np.ndarray, k: int, *, by: str = "abs", eligible: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k pairs with the largest |value| (``by="abs"``) or value (``"signed"``) among the
    ``eligible`` ones (default: every off-diagonal entry): (values with their sign, rows, columns),
    strongest first, ties by position. Fewer than k eligible finite pairs: the rest is NaN, −1, −1."""
    if by not in RANK_BY:
        raise ValueError(f"by must be one of {RANK_BY}, got {by!r}")
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    ok = ~np.eye(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    ok = ok & np.isfinite(m)
    score = np.where(ok, np.abs(m) if by == "abs" else m, -np.inf).ravel()
    k_have = min(int(k), int(ok.sum()))
    if k_have:
        idx = np.argpartition(-score, k_have - 1)[:k_have] if k_have < score.size else np.arange(score.size)
        idx = idx[np.lexsort((idx, -score[idx]))][:k_have]
    else:
        idx = np.empty(0, dtype=np.int64)
    rows, cols = np.divmod(idx, n)
    pad = int(k) - k_have
    values = np.concatenate([m.ravel()[idx], np.full(pad, np.nan)])
    rows = np.concatenate([rows, np.full(pad, -1)]).astype(np.int64)
    cols = np.concatenate([cols, np.full(pad, -1)]).astype(np.int64)
    return values, rows, cols


def fact_summary(p: np.ndarray) -> np.ndarray:
    """Per fact, from the off-diagonal entries of P (rows: facts edited, columns: facts disturbed).

    Returns (6, N): the signed P of the largest-|P| entry in the fact's row (what editing it
    causes) and that entry's column position; the same for its column (what it suffers) with
    the row position; the sum of squares of its row and of its column. With edit strengths of
    unit variance, the row's sum of squares is the expected squared interference an edit of the
    fact spreads over the others, the column's the expected squared interference the fact takes
    from one edit of each other fact."""
    m = np.array(p, dtype=np.float64, copy=True)
    n = m.shape[0]
    m[np.arange(n), np.arange(n)] = np.nan
    a = np.where(np.isnan(m), -np.inf, np.abs(m))
    row_at = np.argmax(a, axis=1)
    col_at = np.argmax(a, axis=0)
    row_max = m[np.arange(n), row_at]
    col_max = m[col_at, np.arange(n)]
    sq = np.where(np.isnan(m), 0.0, m * m)
    return np.stack([row_max, row_at, col_max, col_at, sq.sum(axis=1), sq.sum(axis=0)])


def top_facts(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries of a per-fact score: (values, positions), largest first, ties by position."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    idx = np.lexsort((np.arange(s.size), -s))[:k]
    return s[idx], idx


def masks_from_labels(subject: np.ndarray, relation: np.ndarray, token: np.ndarray | None = None) -> np.ndarray:
    """``pair_set_masks`` from the per-item labels (token ids None: not available)."""
    return pair_set_masks(None if token is None else same_label(token), same_label(subject), same_label(relation))


def pair_counts(subject: np.ndarray, relation: np.ndarray, token: np.ndarray | None = None) -> np.ndarray:
    """Number of pairs in each pair set (PAIR_SETS order); −1 for the token sets without token ids."""
    counts = masks_from_labels(subject, relation, token).sum(axis=(1, 2)).astype(np.int64)
    if token is None:
        counts[[PAIR_SETS.index("same_token"), PAIR_SETS.index("different_token")]] = -1
    return counts


def rank_labelled(matrix: np.ndarray, k: int, subject: np.ndarray, relation: np.ndarray,
                  token: np.ndarray | None = None, *, by: str = "abs", exclude_same_subject: bool = False,
                  exclude_same_token: bool = False, unordered: bool = False) -> tuple[np.ndarray, ...]:
    """``rank_pairs`` with the pairs sharing a subject / key token left out on request, each unordered
    pair once for a symmetric matrix (``unordered``: i < j); returns (values, rows, cols, same_subject,
    same_relation[, same_token]) flags of each ranked pair (False for a missing pair)."""
    same = [same_label(subject), same_label(relation)] + ([] if token is None else [same_label(token)])
    n = same[0].shape[0]
    eligible = ~np.eye(n, dtype=bool)
    if unordered:
        eligible &= np.triu(eligible, 1)
    if exclude_same_subject:
        eligible &= ~same[0]
    if exclude_same_token:
        if token is None:
            raise ValueError("exclude_same_token needs token ids")
        eligible &= ~same[2]
    values, rows, cols = rank_pairs(matrix, k, by=by, eligible=eligible)
    ok = rows >= 0
    r, c = np.where(ok, rows, 0), np.where(ok, cols, 0)
    return (values, rows, cols, *[ok & s[r, c] for s in same])
