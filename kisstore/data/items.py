"""Items (facts) in CounterFact's JSON format: load, validate against schemas/, and tabulate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kisstore.errors import InputError

EMBEDDED = "embedded"
INT64_MAX = 2**63 - 1
QUOTE_LIMIT = 200  # at most this many characters of the input are quoted in an error message


def _short(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (an error message never echoes a whole input)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


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
    data = _decode(raw, file)
    items = parse_items(data, str(file))
    return ItemSet(items, str(file), hashlib.sha256(raw).hexdigest())


def _json(text: str, file: Path, where: str = ""):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"items file {file}{where}: not valid JSON ({_short(e.msg)}: line {e.lineno} "
                         f"column {e.colno})") from None
    except RecursionError:
        raise InputError(f"items file {file}{where}: JSON nested too deeply") from None


def _decode(raw: bytes, file: Path):
    """The records of a JSON list or of JSONL (one record per line, ``.jsonl`` or detected)."""
    try:
        encoding = json.detect_encoding(raw)  # what json.loads(bytes) accepts: UTF-8 (BOM or not), -16, -32
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise InputError(f"items file {file}: not valid JSON (not {encoding} text at byte {e.start})") from None
    if file.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            if not (e.msg == "Extra data" and text.lstrip().startswith("{")):
                raise InputError(f"items file {file}: not valid JSON ({_short(e.msg)}: line {e.lineno} "
                                 f"column {e.colno})") from None
            # a JSON object followed by more: JSONL (one record per line)
        except RecursionError:
            raise InputError(f"items file {file}: JSON nested too deeply") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        rec = _json(line, file, f", line {n}")
        if not isinstance(rec, dict):
            raise InputError(f"items file {file}, line {n}: a JSONL line must be one record (a JSON object), "
                             f"got a JSON {type(rec).__name__}")
        records.append(rec)
    return records


def _check_record(rec: dict, label: str, source: str) -> None:
    """What the schema cannot say: case ids that fit int64 and text that encodes as UTF-8."""
    cid = rec["case_id"]
    if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid <= INT64_MAX:
        raise InputError(f"{source}: {label}: case_id must be an integer from 0 to 2^63-1, got {_short(repr(cid))}")
    rw = rec["requested_rewrite"]
    fields = {"prompt": rw["prompt"], "subject": rw["subject"], "relation_id": rw["relation_id"],
              "target_true.str": rw["target_true"]["str"], "target_new.str": rw["target_new"]["str"]}
    for name, value in fields.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"{source}: {label}: requested_rewrite.{name} is not valid Unicode text "
                             f"(cannot be encoded as UTF-8: a lone surrogate at character {e.start})") from None


def parse_items(data, source: str = "items") -> list[Item]:
    """Validate CounterFact-format records; an error names the record and the field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(items_schema())
    if isinstance(data, dict):
        keys = ", ".join(_short(repr(k), 40) for k in list(data)[:3])
        raise InputError(f"{source}: top level: must be a JSON list of records (or JSONL, one record per line), "
                         f"got an object with keys {keys}{', …' if len(data) > 3 else ''}")
    try:
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply") from None
    if errors:
        e = errors[0]
        where = _where(data, list(e.absolute_path))
        msg = e.message
        quoted = repr(e.instance)
        if len(quoted) > 60 and quoted in msg:  # jsonschema quotes the whole offending value
            msg = msg.replace(quoted, _short(quoted, 60))
        if e.validator == "pattern" and "{}" in str(e.validator_value).replace("\\", ""):
            msg = "prompt has no '{}' placeholder for the subject"
        elif e.validator == "pattern":
            msg = "must not be blank"
        elif e.validator in ("maxLength", "minLength"):
            msg = f"length {len(e.instance)} outside the allowed {e.validator}={e.validator_value}"
        elif e.validator == "required":
            msg = msg.replace(" is a required property", " is missing")
        raise InputError(f"{source}: {where}: {_short(msg)}")
    items: list[Item] = []
    seen: dict[int, int] = {}
    for i, rec in enumerate(data):
        rw = rec["requested_rewrite"]
        cid = rec["case_id"]
        label = f"record {i} (case_id {_short(repr(cid), 40)})"
        _check_record(rec, label, source)
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
            head += f" (case_id {_short(repr(rec['case_id']), 40)})"
    rest = _short(".".join(str(p) for p in path[1:]), 80)
    return f"{head}, field {rest}" if rest else head
