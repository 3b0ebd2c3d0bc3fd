"""CounterFact's evaluation of an edit run, as pure functions (numpy in, numpy out).

The metrics are those of ROME (Meng et al. 2022, §3.2 and App. C) and MEMIT (Meng et al. 2023):

* **efficacy**: on the edited prompt, the share of facts with p(target_new) > p(target_true)
  (score) and the mean p(target_new) − p(target_true) (magnitude);
* **paraphrase generalization**: the same on the record's ``paraphrase_prompts`` (the fact
  in other words), averaged over a record's prompts, then over records;
* **neighborhood specificity**: on the record's ``neighborhood_prompts`` (other subjects with
  the same relation and true target, which an edit should leave alone) the share with
  p(target_true) > p(target_new), and the mean p(target_true) − p(target_new);
* **fluency**: the weighted bi- and tri-gram entropy of generated text, ROME's
  ``n_gram_entropy``: per text ``mean(2/3·H₂, 4/3·H₃)`` in bits, where ``H_n`` is the entropy
  of the text's n-gram frequency distribution; a model that repeats itself scores low.

Probabilities here are those of the whole target (the product over its tokens), as the rest
of ``kisstore edit`` measures them; ROME's code compares the mean per-token NLL instead,
which can order two targets of different length differently.

Words for the n-grams come from :func:`word_tokens`, a regular expression that splits words
and punctuation like NLTK's ``word_tokenize`` does for plain English (kisstore does not
depend on NLTK; contractions and some abbreviations split differently).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kisstore.errors import InputError

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)  # ROME's weights for bi- and tri-grams
_WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


@dataclass(frozen=True)
class CounterFactPrompts:
    """The evaluation prompts of one CounterFact record (the subject already filled in)."""

    paraphrase: tuple[str, ...] = ()
    neighborhood: tuple[str, ...] = ()
    generation: tuple[str, ...] = ()


@dataclass
class PromptSource:
    """Evaluation prompts by case_id, and where they came from (recorded as an attribute)."""

    prompts: dict[int, CounterFactPrompts] = field(default_factory=dict)
    source: str = "none"


def word_tokens(text: str) -> list[str]:
    """Words (with inner hyphens/apostrophes) and single punctuation marks, in order."""
    return _WORD.findall(text)


def ngram_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy in bits of the frequency distribution of ``tokens``' n-grams (0 when there are none)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not counts:
        return 0.0
    f = np.array(list(counts.values()), dtype=np.float64)
    f /= f.sum()
    return float(-(f * np.log2(f)).sum())


def fluency(text: str, orders: Sequence[int] = NGRAM_ORDERS, weights: Sequence[float] = NGRAM_WEIGHTS) -> float:
    """ROME's fluency of one text: the mean over n of ``weight_n · H_n`` (bits)."""
    tokens = word_tokens(text)
    return float(np.mean([w * ngram_entropy(tokens, n) for n, w in zip(orders, weights, strict=True)]))


def score_and_magnitude(p_a: np.ndarray, p_b: np.ndarray) -> tuple[float, float]:
    """CounterFact's score and magnitude for "a beats b" over records × prompts (NaN = absent).

    ``p_a``/``p_b``: (record, prompt) or (record,). A record's score is the share of its prompts
    where ``p_a > p_b``, its magnitude the mean ``p_a − p_b``; both are then averaged over the
    records that have at least one prompt. NaN when none has.
    """
    a = np.asarray(p_a, dtype=np.float64)
    b = np.asarray(p_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    valid = np.isfinite(a) & np.isfinite(b)
    rows = valid.any(axis=1)
    if not rows.any():
        return float("nan"), float("nan")
    wins = np.where(valid, a > b, 0.0).sum(axis=1)[rows] / valid.sum(axis=1)[rows]
    diff = np.where(valid, a - b, 0.0).sum(axis=1)[rows] / valid.sum(axis=1)[rows]
    return float(wins.mean()), float(diff.mean())


def pad_prompts(lists: Sequence[Sequence[str]], limit: int | None = None) -> np.ndarray:
    """(record, prompt) object array of the lists, cut to ``limit`` and padded with ''."""
    width = max([min(len(x), limit) if limit is not None else len(x) for x in lists] + [1])
    out = np.full((len(lists), width), "", dtype=object)
    for r, x in enumerate(lists):
        for c, text in enumerate(list(x)[:width]):
            out[r, c] = text
    return out


def prompts_from_records(records: Iterable[dict]) -> dict[int, CounterFactPrompts]:
    """The evaluation prompts of CounterFact-format records, by case_id (absent lists are empty).

    A record's ``paraphrase_prompts`` and ``generation_prompts`` mention its subject; its
    ``neighborhood_prompts`` are about other subjects. Prompts are whole texts (no ``{}``).
    """
    out: dict[int, CounterFactPrompts] = {}
    for rec in records:
        lists = []
        for name in ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts"):
            value = rec.get(name) or []
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise InputError(f"case_id {rec.get('case_id')!r}: {name} must be a list of strings")
            lists.append(tuple(x.strip() for x in value if x.strip()))
        out[int(rec["case_id"])] = CounterFactPrompts(*lists)
    return out


def load_prompts(path: str | Path) -> PromptSource:
    """Validate an items file (as ``kisstore extract`` does) and read its evaluation prompts."""
    from kisstore.data.items import _decode, load_items

    item_set = load_items(str(path))  # the same checks as extract: a bad file is refused here
    records = _decode(Path(item_set.source).read_bytes(), Path(item_set.source))
    return PromptSource(prompts_from_records(records), f"{Path(item_set.source).name} (sha256 {item_set.sha256})")


def counterfact_summary(rewrite_true, rewrite_new, para_true, para_new, neigh_true, neigh_new,
                        entropies) -> dict[str, float]:
    """The step's scores over the facts it evaluates: efficacy, paraphrase, neighborhood, fluency."""
    es, em = score_and_magnitude(rewrite_new, rewrite_true)
    ps, pm = score_and_magnitude(para_new, para_true)
    ns, nm = score_and_magnitude(neigh_true, neigh_new)  # specificity: the true target should still win
    ent = np.asarray(entropies, dtype=np.float64)
    flu = float(np.nanmean(ent)) if np.isfinite(ent).any() else float("nan")
    return {"efficacy_score": es, "efficacy_magnitude": em, "paraphrase_score": ps, "paraphrase_magnitude": pm,
            "neighborhood_score": ns, "neighborhood_magnitude": nm, "fluency": flu}


def eval_steps(n_edits: int, every: int) -> list[int]:
    """The steps evaluated: 0, every, 2·every, … and the last step (none when ``every`` is 0)."""
    if every <= 0:
        return []
    return sorted({*range(0, n_edits + 1, every), n_edits})



def resolve_prompts(items: str | None, store_items_attrs: dict, edited: Sequence) -> PromptSource:
    """Where the edited facts' CounterFact prompts come from: ``--items FILE``, else the embedded
    facts file when the store was extracted from it (same sha256), else none (metrics NaN).

    The store keeps only each fact's rewrite (prompt, subject, targets); the evaluation prompts
    live in the items file. A file that holds none of the edited facts, or holds one of them
    with another prompt or subject, is refused.
    """
    from kisstore.data.items import embedded_items_path, load_items

    if items is None:
        embedded = embedded_items_path()
        if store_items_attrs.get("source") != embedded.name or not embedded.is_file():
            return PromptSource(source="none (the store's items file is not the embedded one: pass --items FILE)")
        if store_items_attrs.get("items_sha256") != load_items(str(embedded)).sha256:
            return PromptSource(source="none (the embedded facts file changed since extraction: pass --items FILE)")
        items = str(embedded)
    source = load_prompts(items)
    by_id = {it.case_id: it for it in load_items(items).items}
    found = 0
    for it in edited:
        other = by_id.get(it.case_id)
        if other is None:
            continue
        if (other.prompt, other.subject) != (it.prompt, it.subject):
            raise InputError(f"--items {items}: case_id {it.case_id} is {other.prompt.replace('{}', other.subject)!r} "
                             f"there but {it.text!r} in the store: not the items file the store was extracted from")
        found += 1
    if not found:
        raise InputError(f"--items {items}: none of the run's {len(edited)} edited facts (case_ids) is in this file")
    source.prompts = {k: v for k, v in source.prompts.items() if k in {it.case_id for it in edited}}
    return source
