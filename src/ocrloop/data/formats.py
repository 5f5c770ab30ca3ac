"""Reading annotation files: the plan's ``annotations.json``, JSONL, and Hugging Face imagefolder.

Supported layouts, looked up in this order in the dataset root:

* ``annotations.json``: a JSON list of ``{image, text, category, business[, split][, pages]}``;
* ``annotations.jsonl``: one such object per line;
* ``metadata.jsonl`` (imagefolder): ``{file_name, text[, category, business]}`` at the root, or
  one per split folder (``train/metadata.jsonl``), with paths relative to that file.

A record's split is its explicit ``split`` field, else the first folder of its path. A
multi-page PDF carries ``pages: [text, ...]`` instead of ``text``. Problems are collected,
never raised, so one pass reports all of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ocrloop.config import SPLITS
from ocrloop.data.records import DocumentRecord, Problem

ANNOTATIONS_JSON = "annotations.json"
ANNOTATIONS_JSONL = "annotations.jsonl"
IMAGEFOLDER_METADATA = "metadata.jsonl"
UNKNOWN = "unknown"


def find_annotation_files(root: Path) -> list[Path]:
    """The annotation files of the dataset at ``root``, in the format it uses."""
    for name in (ANNOTATIONS_JSON, ANNOTATIONS_JSONL):
        if (root / name).is_file():
            return [root / name]
    metadata = [root / IMAGEFOLDER_METADATA] if (root / IMAGEFOLDER_METADATA).is_file() else []
    metadata += [root / split / IMAGEFOLDER_METADATA for split in SPLITS if (root / split / IMAGEFOLDER_METADATA).is_file()]
    return metadata


def read_records(root: Path) -> tuple[list[DocumentRecord], list[Problem]]:
    """Parse every annotation file of the dataset; return the well-formed records and all problems."""
    files = find_annotation_files(root)
    if not files:
        return [], [Problem(str(root), f"no {ANNOTATIONS_JSON}, {ANNOTATIONS_JSONL} or {IMAGEFOLDER_METADATA} found")]
    records: list[DocumentRecord] = []
    problems: list[Problem] = []
    for path in files:
        relative_name = path.relative_to(root).as_posix()
        if path.name == ANNOTATIONS_JSON:
            entries, entry_problems = _read_json_list(path, relative_name)
        else:
            entries, entry_problems = _read_jsonl(path, relative_name)
        problems += entry_problems
        prefix = path.parent.relative_to(root).as_posix() if path.name == IMAGEFOLDER_METADATA else ""
        for location, entry in entries:
            record, record_problems = _parse_entry(entry, location, prefix)
            problems += record_problems
            if record is not None:
                records.append(record)
    return records, problems


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_json_list(path: Path, name: str) -> tuple[list[tuple[str, Any]], list[Problem]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return [], [Problem(f"{name}:{_line_of(data, error.start)}", f"invalid UTF-8 at byte {error.start}")]
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        return [], [Problem(f"{name}:{error.lineno}:{error.colno}", f"malformed JSON: {error.msg}")]
    except RecursionError:
        return [], [Problem(name, "JSON nested too deeply to be a list of examples")]
    if not isinstance(payload, list):
        return [], [Problem(name, f"expected a JSON list of examples, got {type(payload).__name__}")]
    return [(f"{name}[{index}]", entry) for index, entry in enumerate(payload)], []


def _read_jsonl(path: Path, name: str) -> tuple[list[tuple[str, Any]], list[Problem]]:
    entries: list[tuple[str, Any]] = []
    problems: list[Problem] = []
    for number, raw_line in enumerate(path.read_bytes().splitlines(), start=1):
        location = f"{name}:{number}"
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append(Problem(location, f"invalid UTF-8 at byte {error.start} of the line"))
            continue
        if not line.strip():
            continue
        try:
            entries.append((location, json.loads(line)))
        except json.JSONDecodeError as error:
            problems.append(Problem(location, f"malformed JSON at column {error.colno}: {error.msg}"))
        except RecursionError:
            problems.append(Problem(location, "JSON nested too deeply to be an example"))
    return entries, problems


def encoding_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as UTF-8 (JSON's ``\\ud800`` escapes decode to lone surrogates), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"has an invalid character U+{ord(value[error.start]):04X} (a lone surrogate) at position {error.start}"
    return None


def _text_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "is empty"
    return encoding_problem(value)


def _escapes_root(source: str) -> str | None:
    normalized = source.replace("\\", "/")
    if os.path.isabs(normalized) or normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        return "absolute paths are not allowed; use a path relative to the dataset root"
    if os.path.normpath(normalized).split(os.sep, 1)[0] == "..":
        return "path escapes the dataset root through '..'"
    return None


def _parse_entry(entry: Any, location: str, prefix: str) -> tuple[DocumentRecord | None, list[Problem]]:
    if not isinstance(entry, dict):
        return None, [Problem(location, f"expected an object, got {type(entry).__name__}")]
    problems: list[Problem] = []
    path_field = "image" if "image" in entry else "file_name"
    source = entry.get(path_field)
    if not isinstance(source, str) or not source.strip():
        problems.append(Problem(f"{location}.{path_field}", "missing or not a string (the path of the image or PDF)"))
        source = None
    elif reason := _escapes_root(source) or encoding_problem(source):
        problems.append(Problem(f"{location}.{path_field}", f"{source!a}: {reason}"))
        source = None
    elif prefix:
        source = f"{prefix}/{source}"

    texts: tuple[str, ...] = ()
    if "pages" in entry:
        pages = entry["pages"]
        if not isinstance(pages, list) or not pages:
            problems.append(Problem(f"{location}.pages", "must be a non-empty list of page texts"))
        else:
            page_problems = [
                Problem(f"{location}.pages[{i}]", f"page text {reason}")
                for i, page in enumerate(pages)
                if (reason := _text_problem(page))
            ]
            problems += page_problems
            if not page_problems:
                texts = tuple(pages)
    elif "text" in entry:
        reason = _text_problem(entry["text"])
        if reason:
            problems.append(Problem(f"{location}.text", f"text {reason}"))
        else:
            texts = (entry["text"],)
    else:
        problems.append(Problem(location, "missing 'text' (or 'pages' for a multi-page PDF)"))

    labels = {}
    for label in ("category", "business"):
        value = entry.get(label, UNKNOWN)
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(f"{location}.{label}", f"{label} must be a non-empty string"))
        elif reason := encoding_problem(value):
            problems.append(Problem(f"{location}.{label}", f"{label} {reason}"))
        labels[label] = value.strip().lower() if isinstance(value, str) else UNKNOWN

    split = entry.get("split")
    if split is None and source:
        first = source.replace("\\", "/").split("/", 1)[0]
        split = first if "/" in source.replace("\\", "/") else None
    if (source or "split" in entry) and split not in SPLITS:  # a bad path is reported once, not again as a split
        got = "no split folder and no 'split' field" if split is None else f"unknown split {split!r}"
        problems.append(Problem(f"{location}.split", f"{got}; expected one of {', '.join(SPLITS)}"))

    if problems or source is None:
        return None, problems
    return DocumentRecord(source, texts, split, labels["category"], labels["business"], location), []


def record_to_entry(record: DocumentRecord) -> dict[str, Any]:
    """The ``annotations.json`` entry for ``record`` (the inverse of parsing)."""
    entry: dict[str, Any] = {"image": record.source}
    if len(record.texts) == 1:
        entry["text"] = record.texts[0]
    else:
        entry["pages"] = list(record.texts)
    entry["category"] = record.category
    entry["business"] = record.business
    if record.source.split("/", 1)[0] != record.split:
        entry["split"] = record.split
    return entry
