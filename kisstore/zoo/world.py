"""A seeded synthetic world of facts: entities, correlated attributes, CounterFact items and corpora.

Pure: ``make_world(n_entities, seed)`` returns the same world for the same arguments. A
person's country fixes their native language, a company's country bounds its headquarters
city, a work's language is its author's: the ground truth says which facts share structure.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from kisstore.errors import InputError

MARKER = "kisstore-zoo-world"
SYLLABLES = ("ka", "lo", "mi", "ren", "tor", "vas", "qui", "del", "nor", "sha", "bri", "zel", "mon", "tu",
             "fa", "gro", "lin", "pex", "ova", "dru", "sel", "ham", "io", "ber", "cas", "wen", "yul", "rho")
OCCUPATIONS = ("baker", "pilot", "teacher", "sculptor", "surgeon", "farmer", "poet", "engineer", "judge", "sailor")
# relation -> (templates; the first is the item prompt, the last is held out of train.jsonl)
TEMPLATES: dict[str, tuple[str, ...]] = {
    "P27": ("{} is a citizen of", "The country of citizenship of {} is", "{} holds the citizenship of",
            "{} carries a passport of"),
    "P103": ("The mother tongue of {} is", "The native language of {} is", "{} natively speaks",
             "{} grew up speaking"),
    "P106": ("{} works as a", "The occupation of {} is", "{} earns a living as a", "By profession, {} is a"),
    "P108": ("{} is employed by", "The employer of {} is", "{} works for", "{} draws a salary from"),
    "P17": ("{} is located in", "The country of {} is", "{} can be found in the country of", "{} lies within"),
    "P159": ("The headquarters of {} is in", "{} is headquartered in", "{} has its main office in",
             "{} runs its business from"),
    "P50": ("{} was written by", "The author of {} is", "{} is a work by", "{} came from the pen of"),
    "P407": ("The language of {} is", "{} was written in the language", "{} is a text in", "{} reads in"),
}
# pairs of relations whose values the world ties together (on the same entity, or author → work)
CORRELATED = [["P27", "P103"], ["P17", "P159"], ["P50", "P407"]]
FILLER = ("The weather was {adj} that {time}.", "A {adj} road led past the {noun}.",
          "Nobody remembered the {noun} in the {time}.", "The {noun} seemed {adj} to everyone.",
          "Later, the {noun} was {adj} again.")
ADJ = ("quiet", "cold", "bright", "narrow", "old", "busy", "green", "strange")
NOUN = ("river", "market", "bridge", "garden", "harbour", "library", "tower", "station")
TIME = ("spring", "winter", "morning", "evening", "year", "season")


@dataclass
class World:
    seed: int
    n_entities: int
    entities: list[dict] = field(default_factory=list)
    facts: list[dict] = field(default_factory=list)  # CounterFact records
    train: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    languages: dict[str, str] = field(default_factory=dict)  # country -> language

    def manifest(self) -> dict:
        related = related_pairs(self.facts)
        return {"kind": MARKER, "seed": self.seed, "n_entities": self.n_entities, "languages": self.languages,
                "correlated_relations": CORRELATED, "entities": self.entities,
                "facts": [{"case_id": r["case_id"], "subject": r["requested_rewrite"]["subject"],
                           "relation_id": r["requested_rewrite"]["relation_id"],
                           "target": r["requested_rewrite"]["target_true"]["str"]} for r in self.facts],
                "related_pairs": related}


def _namer(rng: random.Random, taken: set[str]):
    def name(parts: int, words: int = 1) -> str:
        while True:
            n = " ".join("".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize() for _ in range(words))
            if n not in taken:
                taken.add(n)
                return n
    return name


def make_world(n_entities: int, seed: int = 0) -> World:
    """The world of ``n_entities`` entities (40 % people, 20 % each companies, cities, works)."""
    if isinstance(n_entities, bool) or not isinstance(n_entities, int) or n_entities < 5:
        raise InputError(f"--entities must be an integer of at least 5 (a world with every kind), got {n_entities!r}")
    rng = random.Random(seed)
    name = _namer(rng, set())
    n_countries = max(3, min(8, n_entities // 20))
    countries = [name(3) for _ in range(n_countries)]
    languages = {c: name(2) + "ic" for c in countries}
    n_city = max(1, n_entities // 5)
    n_comp = max(1, n_entities // 5)
    n_work = max(1, n_entities // 5)
    n_pers = n_entities - n_city - n_comp - n_work
    w = World(seed, n_entities, languages=languages)
    cities = [{"name": name(2), "kind": "city", "attributes": {"P17": countries[i % n_countries]}}
              for i in range(n_city)]
    by_country: dict[str, list[str]] = {}
    for c in cities:
        by_country.setdefault(c["attributes"]["P17"], []).append(c["name"])
    companies = []
    for _ in range(n_comp):
        country = rng.choice(sorted(by_country))
        companies.append({"name": name(2) + " " + rng.choice(("Works", "Group", "Labs", "Trading")),
                          "kind": "company", "attributes": {"P17": country, "P159": rng.choice(by_country[country])}})
    people = []
    for _ in range(n_pers):
        country = rng.choice(countries)
        people.append({"name": name(2, 2), "kind": "person",
                       "attributes": {"P27": country, "P103": languages[country], "P106": rng.choice(OCCUPATIONS),
                                      "P108": rng.choice(companies)["name"]}})
    lang_of = {p["name"]: p["attributes"]["P103"] for p in people}
    works = []
    for _ in range(n_work):
        author = rng.choice(people)["name"]
        works.append({"name": "The " + name(3), "kind": "work",
                      "attributes": {"P50": author, "P407": lang_of[author]}})
    w.entities = cities + companies + people + works
    ranges: dict[str, list[str]] = {}
    for e in w.entities:
        for rel, v in e["attributes"].items():
            ranges.setdefault(rel, [])
            if v not in ranges[rel]:
                ranges[rel].append(v)
    for vals in ranges.values():  # a relation with one value leaves no target_new: add a foil
        if len(vals) < 2:
            vals.append(name(2))
    holders: dict[tuple[str, str], list[str]] = {}
    for e in w.entities:
        for rel, v in e["attributes"].items():
            holders.setdefault((rel, v), []).append(e["name"])
    for e in w.entities:
        for rel, v in e["attributes"].items():
            t = TEMPLATES[rel]
            new = rng.choice([x for x in ranges[rel] if x != v])
            others = [s for s in holders[(rel, v)] if s != e["name"]][:3]
            w.facts.append({"case_id": len(w.facts), "requested_rewrite": {
                "prompt": t[0], "subject": e["name"], "relation_id": rel,
                "target_true": {"str": v, "id": None}, "target_new": {"str": new, "id": None}},
                "paraphrase_prompts": [t[1].replace("{}", e["name"]), t[2].replace("{}", e["name"])],
                "neighborhood_prompts": [t[0].replace("{}", s) for s in others],
                "attribute_prompts": [], "generation_prompts": []})
    w.train = _documents(w.entities, rng, templates=(0, 1, 2))
    w.heldout = _documents(w.entities, rng, templates=(3,))
    return w


def _filler(rng: random.Random) -> str:
    return rng.choice(FILLER).format(adj=rng.choice(ADJ), noun=rng.choice(NOUN), time=rng.choice(TIME))


def _documents(entities: list[dict], rng: random.Random, templates: tuple[int, ...]) -> list[str]:
    """One document per entity and template: each of its facts stated, between filler sentences."""
    docs = []
    for t in templates:
        for e in entities:
            sentences = [f"{TEMPLATES[rel][t].replace('{}', e['name'])} {v}." for rel, v in e["attributes"].items()]
            rng.shuffle(sentences)
            out = []
            for s in sentences:
                out += [s] + ([_filler(rng)] if rng.random() < 0.5 else [])
            docs.append(" ".join(out))
    rng.shuffle(docs)
    return docs


def related_pairs(facts: list[dict]) -> list[list]:
    """Pairs of case ids [a, b, why] that share ground-truth structure: the same subject, the same
    (relation, value), or correlated relations (same entity, or a work and its author)."""
    rw = [(f["case_id"], f["requested_rewrite"]) for f in facts]
    corr = {frozenset(p) for p in CORRELATED}
    out = []
    for i, (a, ra) in enumerate(rw):
        for b, rb in rw[i + 1:]:
            if ra["subject"] == rb["subject"]:
                why = "correlated" if frozenset((ra["relation_id"], rb["relation_id"])) in corr else "same_entity"
            elif ra["relation_id"] == rb["relation_id"] and ra["target_true"]["str"] == rb["target_true"]["str"]:
                why = "same_value"
            else:
                continue
            out.append([a, b, why])
    return out


def is_zoo(out: Path) -> bool:
    try:
        return json.loads((Path(out) / "world.json").read_text()).get("kind") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def write_world(out: str | Path, n_entities: int, seed: int = 0) -> World:
    """Write facts.json, train.jsonl, heldout.jsonl and world.json under ``out`` (a new or empty
    folder, or a zoo of the same seed and size); refuse any other existing folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_zoo(out):
            raise InputError(f"{out} is an existing folder that is not a zoo (no zoo world.json); choose a new folder")
        m = json.loads((out / "world.json").read_text())
        if (m.get("seed"), m.get("n_entities")) != (seed, n_entities):
            raise InputError(f"{out} holds a world of seed {m.get('seed')} with {m.get('n_entities')} entities; "
                             "choose a new folder for another world")
    w = make_world(n_entities, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "facts.json").write_text(json.dumps(w.facts, indent=1))
    for fname, docs in (("train.jsonl", w.train), ("heldout.jsonl", w.heldout)):
        (out / fname).write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = w.manifest()
    m["facts_sha256"] = hashlib.sha256((out / "facts.json").read_bytes()).hexdigest()
    (out / "world.json").write_text(json.dumps(m, indent=1))
    return w
