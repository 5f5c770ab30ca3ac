"""Adding labeled documents to a dataset without ever leaving it half-written.

Order of operations: every incoming file is checked first (nothing is copied if one is bad),
then the names about to be written go into a journal, files are copied atomically into their
split folder, the annotation file is rewritten atomically, and the journal is removed. A process
killed in between never leaves an annotation that points at a missing or partial file; the copies
and temporary files it did leave are named by the journal and removed by the next ``add``.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ocrloop.atomic import atomic_copy, atomic_write_json, atomic_write_text
from ocrloop.config import SPLITS, DataConfig
from ocrloop.data.dataset import Dataset, map_in_threads
from ocrloop.data.files import inspect_file
from ocrloop.data.formats import (ANNOTATIONS_JSON, ANNOTATIONS_JSONL, encoding_problem, find_annotation_files,
                                  read_records, record_to_entry)
from ocrloop.data.records import DocumentRecord, FileInfo
from ocrloop.errors import DatasetError
from ocrloop.locking import file_lock

LOCK_NAME = ".ocrloop-dataset.lock"
JOURNAL_NAME = ".ocrloop-add.journal"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class IncomingDocument:
    """A labeled file to add: one text per page (one for an image)."""

    path: Path
    texts: tuple[str, ...]
    category: str
    business: str
    split: str | None = None  # None: chosen from the content hash (``split_by_content``)
    name: str | None = None  # file name to use inside the dataset; defaults to the source's
    # What ``inspect_file`` found, where the caller wrote the file (a rendering process): not decoded again here.
    inspected: FileInfo | None = None


@dataclass
class AddResult:
    added: list[DocumentRecord]
    refused: list[str]
    cleaned: list[str] = field(default_factory=list)  # files an interrupted earlier add left, now removed
    files: dict[str, FileInfo] = field(default_factory=dict)  # what inspecting each added file found, by source


def _check_incoming(document: IncomingDocument, data: DataConfig) -> tuple[FileInfo | None, str | None]:
    if document.split is not None and document.split not in SPLITS:
        return None, f"unknown split {document.split!r}; expected one of {', '.join(SPLITS)}"
    for label, value in (("category", document.category), ("business", document.business)):
        if not value or not value.strip():
            return None, f"{label} must not be empty"
        if reason := encoding_problem(value):
            return None, f"{label} {reason}"
    if not document.texts or any(not isinstance(t, str) or not t.strip() for t in document.texts):
        return None, "text is missing or empty"
    for text in document.texts:
        if reason := encoding_problem(text):
            return None, f"text {reason}"
    info, reason = (document.inspected, None) if document.inspected is not None else inspect_file(document.path, data)
    if reason:
        return None, reason
    if info.pages != len(document.texts):
        return None, f"has {info.pages} page(s) but {len(document.texts)} text(s) were given"
    return info, None


def add_documents(root: Path, documents: list[IncomingDocument], data: DataConfig | None = None,
                  move: bool = False) -> AddResult:
    """Copy ``documents`` into the dataset at ``root`` and record them in its annotation file.

    Documents whose content is already in the dataset (in any split) are refused, as are
    duplicates within ``documents``. A document that fails the file checks raises
    ``DatasetError`` before anything is written. With ``move``, the files are the caller's own
    (rendered into a temporary folder under ``root``) and are renamed into place instead of copied;
    a document that carries ``inspected`` (what ``inspect_file`` found where it was rendered) is not
    decoded again.
    """
    data = data or DataConfig()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / LOCK_NAME, what=f"dataset {root}"):
        cleaned = _clean_interrupted_add(root)
        annotation_files = find_annotation_files(root)
        if annotation_files and annotation_files[0].name not in (ANNOTATIONS_JSON, ANNOTATIONS_JSONL):
            raise DatasetError(f"{root}: adding to an imagefolder (metadata.jsonl) dataset is not supported; use annotations.json")
        annotation_path = annotation_files[0] if annotation_files else root / ANNOTATIONS_JSON
        existing = Dataset.open(root, data) if annotation_files else None
        known = {info.content_hash for info in existing.files.values()} if existing else set()
        used_names = {r.source for r in existing.records} if existing else set()

        checked: list[tuple[IncomingDocument, FileInfo]] = []
        refused: list[str] = []
        workers = min(8, os.cpu_count() or 1)  # checking decodes every file: threads (decoding releases the GIL)
        check = functools.partial(_check_incoming, data=data)
        # Nothing left to decode: a thread per document would cost more than its check.
        inspected = all(d.inspected is not None for d in documents)
        for document, (info, reason) in zip(documents, map(check, documents) if inspected else
                                            map_in_threads(check, documents, workers)):
            if reason:
                raise DatasetError(f"{document.path}: {reason}")
            if info.content_hash in known:
                refused.append(f"{document.path}: already in the dataset (same content)")
                continue
            known.add(info.content_hash)
            checked.append((replace(document, split=document.split or split_by_content(info.content_hash, data)), info))

        added: list[DocumentRecord] = []
        for document, info in checked:
            source = _destination_name(root, document, info.content_hash, used_names)
            used_names.add(source)
            added.append(DocumentRecord(source, document.texts, document.split, document.category.strip().lower(), document.business.strip().lower(), source))
        if added:
            atomic_write_json(root / JOURNAL_NAME, [record.source for record in added])
            pairs = [(document.path, root / record.source) for (document, _), record in zip(checked, added)]
            if move:
                _move_into_place(pairs)
            else:
                for _ in map_in_threads(lambda pair: atomic_copy(*pair), pairs, workers):
                    pass
            _append_entries(annotation_path, [record_to_entry(r) for r in added])
            (root / JOURNAL_NAME).unlink()
        return AddResult(added, refused, cleaned, {record.source: info for (_, info), record in zip(checked, added)})


def _move_into_place(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each source to its destination (atomic within one filesystem; a copy across two), then flush once.

    A copy writes every byte again and fsyncs each file and its folder: for 180,000 rendered lessons that is 360,000
    fsyncs. One ``os.sync`` before the annotation file names the files keeps the order that survives a power cut."""
    for folder in {destination.parent for _, destination in pairs}:
        folder.mkdir(parents=True, exist_ok=True)
    for source, destination in pairs:
        try:
            os.replace(source, destination)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            atomic_copy(source, destination)
    os.sync()


def split_by_content(content_hash: str, data: DataConfig) -> str:
    """``test``, ``val`` or ``train`` for a document, from its content hash: the same document always lands in the
    same split, whatever order or batches it arrives in, at ``data.test_fraction`` / ``data.val_fraction``."""
    position = int(content_hash[:12], 16) / 16**12
    if position < data.test_fraction:
        return "test"
    return "val" if position < data.test_fraction + data.val_fraction else "train"


def _clean_interrupted_add(root: Path) -> list[str]:
    """Remove what a killed ``add`` left: journaled copies no annotation names, and half-written temporary files."""
    cleaned: list[str] = []
    journal = root / JOURNAL_NAME
    if journal.exists():
        try:
            written = json.loads(journal.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            written = []  # killed while the journal itself was written: atomic, so it is absent or whole
        referenced = {record.source for record in read_records(root)[0]} if find_annotation_files(root) else set()
        for source in written:
            if isinstance(source, str) and source not in referenced and (root / source).is_file():
                (root / source).unlink()
                cleaned.append(source)
        journal.unlink()
    for folder in (root, *(root / split for split in SPLITS)):
        for temporary in folder.glob(".*.tmp") if folder.is_dir() else ():
            temporary.unlink()
            cleaned.append(temporary.relative_to(root).as_posix())
    return cleaned


def _destination_name(root: Path, document: IncomingDocument, digest: str, used: set[str]) -> str:
    name = document.name or document.path.name
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = _SAFE_NAME.sub("_", stem).strip("._") or "document"
    candidate = f"{document.split}/{stem}{suffix}"
    if candidate in used or (root / candidate).exists():
        candidate = f"{document.split}/{stem}-{digest[:10]}{suffix}"
    return candidate


def _append_entries(annotation_path: Path, entries: list[dict]) -> None:
    if annotation_path.name == ANNOTATIONS_JSONL:
        previous = annotation_path.read_text(encoding="utf-8") if annotation_path.exists() else ""
        if previous and not previous.endswith("\n"):
            previous += "\n"
        lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        atomic_write_text(annotation_path, previous + lines)
        return
    current = json.loads(annotation_path.read_text(encoding="utf-8")) if annotation_path.exists() else []
    if not isinstance(current, list):
        raise DatasetError(f"{annotation_path}: expected a JSON list; fix it before adding documents")
    atomic_write_json(annotation_path, current + entries)


def read_sidecar_texts(path: Path, text: str | None = None) -> tuple[str, ...]:
    """The ground truth of ``path``: ``text`` if given, else ``NAME.md`` or ``NAME.txt`` beside it.

    Pages of a multi-page PDF are separated by a form feed (``\\f``) in the sidecar file.
    """
    if text is not None:
        return tuple(part for part in text.split("\f"))
    for suffix in (".md", ".txt"):
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            try:
                content = sidecar.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise DatasetError(f"{sidecar}: invalid UTF-8 at byte {error.start}") from None
            return tuple(page.strip("\n") for page in content.split("\f"))
    raise DatasetError(f"{path}: no ground truth; pass --text or put {path.stem}.md beside it")
