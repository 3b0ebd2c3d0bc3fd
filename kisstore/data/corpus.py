"""Text corpora for the covariance pass, streamed document by document.

Spec strings (``--corpus``):
- ``embedded`` / ``python-docs``: Python's own bundled help topics (``pydoc_data``), split into
  paragraph documents. Needs no network and no extra package; technical English, so its
  statistics differ from Wikipedia's (see docs/corpora.md).
- ``wordnet``: WordNet glosses from Debian's ``wordnet-base`` (``/usr/share/wordnet``).
- ``wikipedia``: the Hub's ``wikimedia/wikipedia`` ``20231101.en``, streamed (the paper used
  ``20220301.en``); needs network.
- ``hf:NAME[:CONFIG]``: any Hub dataset with a ``text`` column, streamed (``train`` split).
- ``hf:DIR``: a local dataset folder: data files ``datasets.load_dataset`` reads (parquet, jsonl,
  ...), or a folder written by ``Dataset.save_to_disk``. Works offline.
- local ``.txt`` (blank-line separated documents), ``.jsonl`` (``text`` field) or ``.parquet``
  (``text`` column) files, or a glob of them.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kisstore.errors import InputError

WORDNET_DIR = Path(os.environ.get("KISSTORE_WORDNET_DIR", "/usr/share/wordnet"))
WIKIPEDIA = ("wikimedia/wikipedia", "20231101.en")


@dataclass(frozen=True)
class Corpus:
    spec: str
    kind: str

    def probe(self) -> CorpusSize | None:
        """Check the corpus before any work, so a bad one fails before hours of other work.

        Local ``.txt``/``.jsonl`` files are read through once: every byte must decode as UTF-8
        (no NUL bytes in text files), every JSONL line must be JSON with a string ``text``; a
        ``.parquet`` file must be readable and have a ``text`` column. Returns an upper bound
        on the corpus's size (:class:`CorpusSize`) where one is known, else None. A Hub dataset
        is opened here (one request) and its first document checked; an unreachable Hub or an
        unknown name raises :class:`InputError`."""
        if self.kind == "hf":
            _refuse_offline(self.spec)
            first = next(iter(self.documents()), None)
            if first is not None and not isinstance(first, str):
                raise InputError(f"corpus {_quote(self.spec)}: the text column holds {type(first).__name__} "
                                 "values, not strings")
            return None
        if self.kind == "files":
            return _check_files(self.spec)
        return None

    def files(self) -> list[list]:
        """[file name, size] of a file corpus's files in reading order ([] for other kinds): what a
        checkpoint keeps to name the files added, removed or edited when the content changed."""
        if self.kind != "files":
            return []
        out = []
        for p in _expand(self.spec):
            try:
                out.append([p.name, p.stat().st_size])
            except OSError:
                continue
        return out

    def documents(self) -> Iterator[str]:
        """Yield documents in a fixed order (resuming relies on it)."""
        if self.kind == "python-docs":
            yield from _python_docs()
        elif self.kind == "wordnet":
            yield from _wordnet()
        elif self.kind == "hf":
            yield from _hub(self.spec)
        else:
            yield from _files(self.spec)


@dataclass(frozen=True)
class CorpusSize:
    """Upper bounds on a local corpus: its documents and the UTF-8 bytes of their text."""

    documents: int
    utf8_bytes: int

    def max_tokens(self, max_length: int) -> int:
        """At most this many tokens: a token covers at least one byte (byte-level BPE and
        SentencePiece's byte fallback alike), plus a few special tokens per document, and no
        document gives more than ``max_length``. Errs towards too many, never too few."""
        return min(self.utf8_bytes + 8 * self.documents, self.documents * max_length)


def _quote(text: str, limit: int = 200) -> str:
    text = repr(str(text))
    return text if len(text) <= limit else text[:limit] + "…"


def _check_files(spec: str) -> CorpusSize | None:
    documents = size = 0
    known = True
    for p in _expand(spec):
        if p.suffix == ".txt":
            d, b = _check_txt(p)
        elif p.suffix == ".jsonl":
            d, b = _check_jsonl(p)
        else:
            _check_parquet(p)
            known, d, b = False, 0, 0  # no cheap bound on a parquet file's text
        documents, size = documents + d, size + b
    return CorpusSize(documents, size) if known else None


def _check_txt(path: Path) -> tuple[int, int]:
    """(at most this many documents, UTF-8 bytes) of a text file; refuse bad UTF-8 and NUL bytes."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = newlines = lines = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                # the decoder may hold back up to 3 bytes of an unfinished character from the last chunk
                at = max(0, offset + e.start - len(e.object) + len(chunk))
                line = lines + 1 + (chunk[: at - offset].count(b"\n") if at >= offset else 0)
                raise InputError(f"corpus file {path}: not valid UTF-8 text (byte {at}, line {line}); "
                                 "a binary file, or another encoding?") from None
            if not chunk:
                break
            if b"\0" in chunk:
                at = offset + chunk.index(b"\0")
                raise InputError(f"corpus file {path}: NUL bytes (at byte {at}): a binary file, not text")
            lines += chunk.count(b"\n")
            newlines += chunk.count(b"\r")
            offset += len(chunk)
    return lines + newlines + 1, offset  # each document ends at a blank line: no more documents than line breaks + 1


def _check_jsonl(path: Path) -> tuple[int, int]:
    """(documents, UTF-8 bytes of their text) of a JSONL file; refuse what the corpus pass would."""
    documents = size = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"corpus file {path}, line {n}: not valid UTF-8 text (byte {e.start} of the line)") \
                    from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise InputError(f"corpus file {path}, line {n}: not valid JSON") from None
            text = rec.get("text") if isinstance(rec, dict) else None
            if not isinstance(text, str):
                raise InputError(f"corpus file {path}, line {n}: no string field 'text'")
            try:
                size += len(text.encode("utf-8"))
            except UnicodeEncodeError:
                raise InputError(f"corpus file {path}, line {n}: 'text' is not valid Unicode (a lone surrogate)") \
                    from None
            documents += 1
    return documents, size


def _check_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # ArrowInvalid, OSError: not a parquet file, or a truncated one
        raise InputError(f"corpus file {path}: not a readable parquet file ({type(e).__name__}: "
                         f"{_first_line(e)})") from None
    if "text" not in names:
        raise InputError(f"corpus file {path}: no 'text' column")


def resolve_corpus(spec: str) -> Corpus:
    """Check a corpus spec without reading it all."""
    if not spec or not str(spec).strip():
        raise InputError("--corpus is empty")
    spec = str(spec).strip()
    if spec in ("embedded", "python-docs"):
        return Corpus(spec, "python-docs")
    if spec == "wordnet":
        if not any(WORDNET_DIR.glob("data.*")):
            raise InputError(
                f"corpus 'wordnet' needs WordNet's data files in {WORDNET_DIR} "
                "(Debian: apt-get install wordnet-base)"
            )
        return Corpus(spec, "wordnet")
    if spec == "wikipedia" or spec.startswith("hf:"):
        _hub_source(spec)
        return Corpus(spec, "hf")
    paths = _expand(spec)
    if not paths:
        raise InputError(
            f"corpus {spec!r}: no such file, and not one of embedded, python-docs, wordnet, "
            "wikipedia, hf:NAME[:CONFIG]"
        )
    for p in paths:
        if p.suffix not in (".txt", ".jsonl", ".parquet"):
            raise InputError(f"corpus file {p}: unsupported type (use .txt, .jsonl or .parquet)")
    if all(_blank(p) for p in paths):
        raise InputError(f"corpus {spec!r} is empty (no text in {len(paths)} file(s))")
    return Corpus(spec, "files")


def _blank(path: Path) -> bool:
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _expand(spec: str) -> list[Path]:
    if any(c in spec for c in "*?["):
        return [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
    p = Path(spec)
    return [p] if p.is_file() else []


def _paragraphs(text: str, min_chars: int = 300) -> Iterator[str]:
    """Blank-line separated paragraphs, short neighbours merged so documents are not tiny."""
    buf: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        para = para.strip()
        if not para:
            continue
        buf.append(para)
        size += len(para)
        if size >= min_chars:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def _python_docs() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield from _paragraphs(topics[name], min_chars=1500)


def _wordnet(per_document: int = 20) -> Iterator[str]:
    for pos in ("noun", "verb", "adj", "adv"):
        f = WORDNET_DIR / f"data.{pos}"
        if not f.is_file():
            continue
        batch: list[str] = []
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or "|" not in line:
                    continue  # licence header
                gloss = line.split("|", 1)[1].strip()
                if gloss:
                    batch.append(gloss[0].upper() + gloss[1:] + ("" if gloss.endswith(".") else "."))
                if len(batch) == per_document:
                    yield " ".join(batch)
                    batch = []
        if batch:
            yield " ".join(batch)


def _hub_source(spec: str) -> tuple[str, str | None, Path | None]:
    """(name, config, local directory or None) of a ``wikipedia`` / ``hf:`` spec."""
    if spec == "wikipedia":
        return WIKIPEDIA[0], WIKIPEDIA[1], None
    rest = spec[3:]
    if rest and Path(rest).expanduser().is_dir():  # a local dataset folder (its path may hold ':')
        local = Path(rest).expanduser()
        return str(local), None, local
    name, _, config = rest.partition(":")
    if not name:
        raise InputError(f"corpus {spec!r}: no dataset name after 'hf:' (hf:NAME[:CONFIG] or hf:LOCAL_DIR)")
    return name, config or None, None


def _saved_dataset(path: Path, spec: str):
    """A dataset written by ``Dataset.save_to_disk``: its rows (the ``train`` split of a DatasetDict)."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise InputError(f"corpus {spec!r}: the saved DatasetDict has no 'train' split "
                             f"(it has {', '.join(ds)}); point hf: at one split's folder")
        ds = ds["train"]
    return ds


def _refuse_offline(spec: str) -> None:
    """A Hub dataset (streamed, so never from a cache) with the Hub unreachable: one line now,
    not after the datasets client's retries."""
    name, config, local = _hub_source(spec)
    if local is not None:
        return  # a local dataset folder
    from kisstore.models.loading import hub_offline

    if why := hub_offline():
        raise InputError(f"corpus {spec!r}: cannot read {name}{':' + config if config else ''} from the Hugging "
                         f"Face Hub, which cannot be reached ({why}); use a local file, a local dataset folder "
                         "(hf:DIR) or --corpus embedded")


def _hub(spec: str) -> Iterator[str]:
    name, config, local = _hub_source(spec)
    _refuse_offline(spec)
    where = f"the local dataset {local}" if local else (
        f"{name}{':' + config if config else ''} from the Hugging Face Hub")
    try:
        if local is not None and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
            ds = _saved_dataset(local, spec)
        else:
            from datasets import load_dataset

            ds = load_dataset(name, config, split="train", streaming=True)
        it = iter(ds)
        first = next(it)
    except StopIteration:
        return
    except InputError:
        raise
    except Exception as e:  # offline, unknown dataset, gated, no train split, ...
        hint = "" if local else " Offline? Use a local file, a local dataset folder (hf:DIR) or --corpus embedded."
        raise InputError(f"corpus {spec!r}: cannot read {where} ({type(e).__name__}: {_first_line(e)}).{hint}") \
            from None
    column = "text" if "text" in first else next((k for k, v in first.items() if isinstance(v, str)), None)
    if column is None:
        raise InputError(f"corpus {spec!r}: no text column in the dataset (columns: {', '.join(first)})")
    if first[column]:
        yield first[column]
    for row in it:
        text = row[column]
        if text:
            yield text


def _first_line(e: Exception, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    return (text[0][:limit] if text else "")


def _files(spec: str) -> Iterator[str]:
    for p in _expand(spec):
        if p.suffix == ".txt":
            yield from _paragraphs(p.read_text(encoding="utf-8", errors="replace"), min_chars=1)
        elif p.suffix == ".jsonl":
            with open(p, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        raise InputError(f"corpus file {p}, line {n}: not valid JSON") from None
                    text = rec.get("text") if isinstance(rec, dict) else None
                    if not isinstance(text, str):
                        raise InputError(f"corpus file {p}, line {n}: no string field 'text'")
                    yield text
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            if "text" not in table.column_names:
                raise InputError(f"corpus file {p}: no 'text' column")
            for batch in table.column("text").chunks:
                for text in batch.to_pylist():
                    if text:
                        yield text
