"""Items (facts) in CounterFact's JSON format: load, validate against schemas/, and tabulate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kisstore.errors import InputError

EMBEDDED = "embedded"


@dataclass(frozen=True)
class Item:
    case_id: int
    prompt: str  # template with "{}" for the subject
    subject: str
    relation_id: str
    target_true: str
    target_new: str

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)


@dataclass(frozen=True)
class ItemSet:
    items: list[Item]
    source: str
    sha256: str

    def __len__(self) -> int:
        return len(self.items)


def items_schema() -> dict:
    """The JSON Schema of items files (installed as ``kisstore.schemas``; ``schemas/`` in a source tree)."""
    try:
        return json.loads(resources.files("kisstore.schemas").joinpath("items.schema.json").read_text())
    except ModuleNotFoundError:
        return json.loads((Path(__file__).resolve().parents[2] / "schemas" / "items.schema.json").read_text())


def embedded_items_path() -> Path:
    return Path(str(resources.files("kisstore.data").joinpath("facts.json")))


def load_items(path: str | None = None) -> ItemSet:
    """Read and validate an items file; ``None``/``"embedded"`` is our shipped facts file."""
    file = embedded_items_path() if path in (None, EMBEDDED) else Path(path)
    if not file.is_file():
        raise InputError(f"items file {path} does not exist")
    raw = file.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"items file {file}: not valid JSON ({e})") from None
    items = parse_items(data, str(file))
    return ItemSet(items, str(file), hashlib.sha256(raw).hexdigest())


def parse_items(data, source: str = "items") -> list[Item]:
    """Validate CounterFact-format records; an error names the record and the field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(items_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = _where(data, list(e.absolute_path))
        msg = e.message
        if e.validator == "pattern" and "{}" in str(e.validator_value).replace("\\", ""):
            msg = "prompt has no '{}' placeholder for the subject"
        elif e.validator == "pattern":
            msg = "must not be blank"
        elif e.validator in ("maxLength", "minLength"):
            msg = f"length {len(e.instance)} outside the allowed {e.validator}={e.validator_value}"
        elif e.validator == "required":
            msg = msg.replace(" is a required property", " is missing")
        raise InputError(f"{source}: {where}: {msg}")
    items: list[Item] = []
    seen: dict[int, int] = {}
    for i, rec in enumerate(data):
        rw = rec["requested_rewrite"]
        cid = rec["case_id"]
        label = f"record {i} (case_id {cid})"
        if cid in seen:
            raise InputError(f"{source}: {label}: duplicate case_id (also record {seen[cid]})")
        seen[cid] = i
        if rw["prompt"].count("{}") != 1:
            raise InputError(f"{source}: {label}: requested_rewrite.prompt must contain exactly one '{{}}'")
        if rw["subject"].strip() != rw["subject"]:
            raise InputError(f"{source}: {label}: requested_rewrite.subject has leading or trailing spaces")
        if rw["target_true"]["str"] == rw["target_new"]["str"]:
            raise InputError(f"{source}: {label}: target_new equals target_true")
        items.append(
            Item(int(cid), rw["prompt"], rw["subject"], rw["relation_id"],
                 rw["target_true"]["str"].strip(), rw["target_new"]["str"].strip())
        )
    return items


def _where(data, path: list) -> str:
    if not path:
        return "top level"
    head = f"record {path[0]}"
    if isinstance(path[0], int) and isinstance(data, list) and path[0] < len(data):
        rec = data[path[0]]
        if isinstance(rec, dict) and "case_id" in rec:
            head += f" (case_id {rec['case_id']})"
    rest = ".".join(str(p) for p in path[1:])
    return f"{head}, field {rest}" if rest else head
