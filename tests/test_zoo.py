"""kisstore zoo world: a deterministic world whose corpus states every fact and whose ground truth matches its items."""

from __future__ import annotations

import json

import pytest

from kisstore.data.items import load_items
from kisstore.zoo.world import TEMPLATES, make_world, related_pairs, write_world
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "w"
    run_cli("zoo", "world", str(out), "--entities", "40", "--seed", "3", check=True)
    return out


def test_world_is_deterministic_for_a_seed(world_dir, tmp_path):
    again = tmp_path / "again"
    write_world(again, 40, 3)
    for f in ("facts.json", "train.jsonl", "heldout.jsonl", "world.json"):
        assert (again / f).read_bytes() == (world_dir / f).read_bytes(), f
    assert make_world(40, 4).facts != make_world(40, 3).facts


def test_facts_load_with_kisstores_items_loader_and_every_fact_is_stated_in_train(world_dir):
    items = load_items(str(world_dir / "facts.json")).items
    assert len(items) > 40
    train = "\n".join(json.loads(line)["text"] for line in (world_dir / "train.jsonl").read_text().splitlines())
    for it in items:
        for t in TEMPLATES[it.relation_id][:3]:
            assert f"{t.replace('{}', it.subject)} {it.target_true}." in train, (it, t)


def test_heldout_documents_are_disjoint_from_train(world_dir):
    def docs(name):
        return {json.loads(line)["text"] for line in (world_dir / name).read_text().splitlines()}

    train, held = docs("train.jsonl"), docs("heldout.jsonl")
    assert held and not (train & held)
    train_sentences = {s for d in train for s in d.split(". ")}
    fact_sentences = {s for d in held for s in d.split(". ") if any(
        t[3].replace("{}", "").strip() in s for t in TEMPLATES.values())}
    assert fact_sentences and not (fact_sentences & train_sentences)


def test_ground_truth_is_consistent_with_items(world_dir):
    m = json.loads((world_dir / "world.json").read_text())
    items = {it.case_id: it for it in load_items(str(world_dir / "facts.json")).items}
    ents = {e["name"]: e for e in m["entities"]}
    for f in m["facts"]:
        it = items[f["case_id"]]
        assert ents[it.subject]["attributes"][it.relation_id] == it.target_true == f["target"]
    for e in m["entities"]:  # the correlations the world claims
        a = e["attributes"]
        if e["kind"] == "person":
            assert a["P103"] == m["languages"][a["P27"]]
        if e["kind"] == "company":
            assert ents[a["P159"]]["attributes"]["P17"] == a["P17"]
        if e["kind"] == "work":
            assert a["P407"] == ents[a["P50"]]["attributes"]["P103"]
    raw = json.loads((world_dir / "facts.json").read_text())
    assert m["related_pairs"] == related_pairs(raw) and m["related_pairs"]


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for args in (["zoo", "world", str(other)], ["zoo", "world", str(tmp_path / "n"), "--entities", "0"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("Error:") and len(r.stderr.strip().splitlines()) == 1
    assert (other / "notes.txt").read_text() == "mine" and len(list(other.iterdir())) == 1
