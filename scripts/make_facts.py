"""Build kisstore/data/facts.json from scripts/facts_tables.py (a development aid; the JSON is what ships).

    python scripts/make_facts.py            # writes kisstore/data/facts.json
    python scripts/make_facts.py --check    # exits 1 when the file differs from what the tables give

Records follow CounterFact's construction (Meng et al., 2022) on our own facts:
- ``requested_rewrite.prompt`` is one of the relation's main templates, rotated over its records;
- ``paraphrase_prompts`` are two other wordings of the relation with the same subject;
- ``neighborhood_prompts`` ask the same relation about *other* subjects whose true target is the
  same (an edit of this record should leave them unchanged);
- ``attribute_prompts`` ask the relation about subjects whose true target is ``target_new``;
- ``generation_prompts`` are open prompts about the subject.
``target_new`` is another target of the same relation, drawn with a fixed seed. Records are
shuffled (fixed seed) so that any prefix of the file, such as the demo's first 128 known facts,
mixes relations and subject kinds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facts_tables import RELATIONS  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "kisstore" / "data" / "facts.json"
SEED = 17
N_NEIGHBORHOOD = 10
N_ATTRIBUTE = 10


def parse_table(table: str) -> list[tuple[str, str | None, list[str]]]:
    """``Target|Qid: a; b; c`` lines → (target, qid or None, subjects)."""
    rows = []
    for line in table.strip().splitlines():
        head, rest = line.split(":", 1)
        target, _, qid = head.partition("|")
        subjects = [s.strip() for s in rest.split(";") if s.strip()]
        rows.append((target.strip(), qid.strip() or None, subjects))
    return rows


def build() -> list[dict]:
    rng = random.Random(SEED)
    records: list[dict] = []
    seen: dict[str, str] = {}
    for rel, spec in RELATIONS.items():
        rows = parse_table(spec["table"])
        prompts, others, generation = spec["prompts"], spec["paraphrases"], spec["generation"]
        wordings = prompts + others
        by_target = {t: subs for t, _, subs in rows}
        qids = {t: q for t, q, _ in rows}
        if len(rows) < 2:
            raise ValueError(f"{rel}: needs two targets or more (target_new is another target)")
        n = 0
        for target, qid, subjects in rows:
            if len(subjects) < 4:
                raise ValueError(f"{rel} {target}: needs 4 subjects or more (3 neighbours each)")
            for subject in subjects:
                if subject in seen:
                    raise ValueError(f"subject {subject!r} in {rel} and {seen[subject]}")
                seen[subject] = rel
                k = n % len(prompts)
                n += 1
                prompt = prompts[k]
                paraphrases = [t.format(subject) for t in rng.sample([w for w in wordings if w != prompt], 2)]
                new = rng.choice([t for t in by_target if t != target])
                neighbours = rng.sample([s for s in subjects if s != subject],
                                        min(N_NEIGHBORHOOD, len(subjects) - 1))
                attributes = rng.sample(by_target[new], min(N_ATTRIBUTE, len(by_target[new])))
                records.append({
                    "case_id": None,
                    "pararel_idx": None,
                    "requested_rewrite": {
                        "prompt": prompt, "subject": subject, "relation_id": rel,
                        "target_true": {"str": target, "id": qid},
                        "target_new": {"str": new, "id": qids[new]},
                    },
                    "paraphrase_prompts": paraphrases,
                    "neighborhood_prompts": [rng.choice(wordings).format(s) for s in neighbours],
                    "attribute_prompts": [rng.choice(wordings).format(s) for s in attributes],
                    "generation_prompts": [g.format(subject) for g in generation],
                })
    rng.shuffle(records)
    for i, rec in enumerate(records):
        rec["case_id"] = i
    return records


def dumps(records: list[dict]) -> str:
    """One record per line: diffs stay readable and the file stays plain JSON."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    text = dumps(build())
    if args.check:
        same = args.out.read_text(encoding="utf-8") == text
        print("facts.json is up to date" if same else "facts.json differs from scripts/facts_tables.py")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({text.count(chr(10)) - 2} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
