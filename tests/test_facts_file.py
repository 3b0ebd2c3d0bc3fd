"""The embedded facts file: CounterFact's format and construction, checked record by record."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from kisstore.data.items import embedded_items_path, load_items

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return json.loads(embedded_items_path().read_text(encoding="utf-8"))


def test_loader_accepts_the_file_and_subjects_are_distinct(records):
    items = load_items(None).items
    assert len(items) == len(records) >= 1500
    assert [it.case_id for it in items] == list(range(len(items)))
    assert len({it.subject for it in items}) == len(items)
    assert len({it.relation_id for it in items}) >= 15


def test_every_record_has_every_counterfact_field(records):
    for rec in records:
        assert set(rec) == {"case_id", "pararel_idx", "requested_rewrite", "paraphrase_prompts",
                            "neighborhood_prompts", "attribute_prompts", "generation_prompts"}
        rw = rec["requested_rewrite"]
        assert set(rw) == {"prompt", "subject", "relation_id", "target_true", "target_new"}
        assert rw["relation_id"].startswith("P") and rw["relation_id"][1:].isdigit()
        for t in (rw["target_true"], rw["target_new"]):
            assert set(t) == {"str", "id"} and (t["id"] is None or t["id"].startswith("Q"))


def test_a_target_string_has_one_wikidata_id(records):
    ids = defaultdict(set)
    for rec in records:
        for t in (rec["requested_rewrite"]["target_true"], rec["requested_rewrite"]["target_new"]):
            ids[(rec["requested_rewrite"]["relation_id"], t["str"])].add(t["id"])
    assert {k: v for k, v in ids.items() if len(v) > 1} == {}


def test_paraphrases_and_generation_prompts_are_about_the_subject(records):
    for rec in records:
        rw = rec["requested_rewrite"]
        main = rw["prompt"].replace("{}", rw["subject"])
        assert len(rec["paraphrase_prompts"]) >= 2
        assert len(set(rec["paraphrase_prompts"])) == len(rec["paraphrase_prompts"])
        for p in rec["paraphrase_prompts"]:
            assert rw["subject"] in p and p != main and p == p.strip()
        assert len(rec["generation_prompts"]) >= 2
        assert all(rw["subject"] in g for g in rec["generation_prompts"])


def _templates(records) -> dict[str, set[str]]:
    """Each relation's wordings, read back from the records' own prompt and paraphrases."""
    out = defaultdict(set)
    for rec in records:
        rw = rec["requested_rewrite"]
        out[rw["relation_id"]].add(rw["prompt"])
        out[rw["relation_id"]].update(p.replace(rw["subject"], "{}", 1) for p in rec["paraphrase_prompts"])
    return out


def _asks_about(prompt: str, candidates: list[dict], templates: set[str]) -> bool:
    """Whether ``prompt`` is one of the relation's wordings filled with one candidate's subject."""
    return any(prompt.replace(c["requested_rewrite"]["subject"], "{}", 1) in templates for c in candidates)


def test_neighbourhood_prompts_ask_other_subjects_with_the_same_relation_and_true_target(records):
    # CounterFact's neighbourhood: an edit of one fact must leave these unchanged
    templates = _templates(records)
    group = defaultdict(list)
    for rec in records:
        rw = rec["requested_rewrite"]
        group[(rw["relation_id"], rw["target_true"]["str"])].append(rec)
    for rec in records:
        rw = rec["requested_rewrite"]
        others = [r for r in group[(rw["relation_id"], rw["target_true"]["str"])] if r is not rec]
        assert len(rec["neighborhood_prompts"]) >= 3
        for p in rec["neighborhood_prompts"]:
            assert p.replace(rw["subject"], "{}", 1) not in templates[rw["relation_id"]], p  # not this fact
            assert _asks_about(p, others, templates[rw["relation_id"]]), (rec["case_id"], p)


def test_target_new_is_another_true_target_of_the_relation_and_attribute_prompts_ask_its_subjects(records):
    templates = _templates(records)
    group = defaultdict(list)
    for rec in records:
        rw = rec["requested_rewrite"]
        group[(rw["relation_id"], rw["target_true"]["str"])].append(rec)
    for rec in records:
        rw = rec["requested_rewrite"]
        holders = group[(rw["relation_id"], rw["target_new"]["str"])]
        assert rw["target_new"]["str"] != rw["target_true"]["str"] and holders
        assert len(rec["attribute_prompts"]) >= 3
        for p in rec["attribute_prompts"]:
            assert _asks_about(p, holders, templates[rw["relation_id"]]), (rec["case_id"], p)


def test_any_prefix_mixes_relations(records):
    # the demo takes the first known facts in file order: the file must not be grouped by relation
    first = [r["requested_rewrite"]["relation_id"] for r in records[:128]]
    assert len(set(first)) >= 12


def test_generator_reproduces_the_shipped_file():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_facts.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
