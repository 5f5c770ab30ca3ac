"""A document dataset on disk: validated once, then read as page examples.

``Dataset.open(root)`` parses the annotations and inspects every file in one pass, collecting
problems instead of stopping at the first. Examples with problems are left out of
``examples()`` so a broken file never crashes a later training run; ``problems`` says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from ocrloop.config import SPLITS, DataConfig
from ocrloop.data.files import inspect_file, load_page, resolve_inside
from ocrloop.data.formats import read_records
from ocrloop.data.records import DocumentRecord, FileInfo, PageExample, Problem
from ocrloop.errors import DatasetError


@dataclass(frozen=True)
class ManifestEntry:
    """One document in the content manifest: identity by content, not by name."""

    content_hash: str
    source: str
    split: str
    category: str
    business: str
    pages: int
    text_sha256: str

    def identity(self) -> tuple[str, str, str, str, str]:
        # The source path is deliberately absent: renaming a file does not make it a new document.
        return (self.content_hash, self.text_sha256, self.split, self.category, self.business)


@dataclass
class Manifest:
    """The content-hash manifest of a dataset and the hash that identifies the whole of it."""

    entries: list[ManifestEntry]

    @property
    def manifest_hash(self) -> str:
        digest = hashlib.sha256()
        for identity in sorted(entry.identity() for entry in self.entries):
            digest.update("\x1f".join(identity).encode("utf-8") + b"\n")
        return digest.hexdigest()

    @property
    def content_hashes(self) -> set[str]:
        return {entry.content_hash for entry in self.entries}

    def new_since(self, previous: "Manifest | None") -> list[ManifestEntry]:
        """Documents whose content is not in ``previous`` (all of them if there is none)."""
        known = previous.content_hashes if previous else set()
        return [entry for entry in self.entries if entry.content_hash not in known]

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest_hash": self.manifest_hash,
            "documents": [entry.__dict__ for entry in sorted(self.entries, key=lambda e: (e.split, e.source))],
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Manifest":
        return cls([ManifestEntry(**item) for item in payload["documents"]])


@dataclass
class DocumentMix:
    """Counts of documents and pages by split x category x business."""

    documents: Counter = field(default_factory=Counter)
    pages: Counter = field(default_factory=Counter)

    def total(self, split: str | None = None) -> int:
        return sum(count for (s, _, _), count in self.documents.items() if split is None or s == split)

    def by(self, axis: str) -> Counter:
        """Documents per value of ``axis`` ("split", "category" or "business")."""
        index = {"split": 0, "category": 1, "business": 2}[axis]
        totals: Counter = Counter()
        for key, count in self.documents.items():
            totals[key[index]] += count
        return totals

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"split": s, "category": c, "business": b, "documents": n, "pages": self.pages[(s, c, b)]}
            for (s, c, b), n in sorted(self.documents.items())
        ]


class Dataset:
    """A validated view of the dataset at ``root``."""

    def __init__(
        self,
        root: Path,
        data: DataConfig,
        records: list[DocumentRecord],
        files: dict[str, FileInfo],
        problems: list[Problem],
    ) -> None:
        self.root = root
        self.data = data
        self.records = records
        self.files = files
        self.problems = problems

    @classmethod
    def open(cls, root: str | Path, data: DataConfig | None = None) -> "Dataset":
        """Parse and inspect the dataset at ``root``. Raises ``DatasetError`` only if the folder is missing."""
        root = Path(root)
        data = data or DataConfig()
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found")
        records, problems = read_records(root)
        good_records: list[DocumentRecord] = []
        files: dict[str, FileInfo] = {}
        seen_sources: dict[str, str] = {}
        located: list[tuple[DocumentRecord, Path | None, Problem | None]] = []
        for record in records:
            if record.source in seen_sources:
                located.append((record, None, Problem(record.location, f"{record.source} is already listed at {seen_sources[record.source]}")))
                continue
            seen_sources[record.source] = record.location
            path, reason = resolve_inside(root, record.source)
            located.append((record, path, Problem(f"{record.location}.image", f"{record.source}: {reason}") if reason else None))
        # Inspecting decodes every file (hash, header, pixels): threads, since decoding and hashing release the GIL.
        paths = [path for _, path, problem in located if problem is None]
        inspected = iter(map_in_threads(lambda path: inspect_file(path, data), paths, workers=min(8, os.cpu_count() or 1)))
        for record, path, problem in located:
            if problem is not None:
                problems.append(problem)
                continue
            info, reason = next(inspected)
            if reason:
                problems.append(Problem(record.source, reason))
                continue
            if info.kind == "pdf" and info.pages != len(record.texts):
                problems.append(
                    Problem(
                        f"{record.location}.pages",
                        f"{record.source} has {info.pages} page(s) but {len(record.texts)} text(s); "
                        "give one text per page in 'pages'",
                    )
                )
                continue
            if info.kind == "image" and len(record.texts) != 1:
                problems.append(Problem(f"{record.location}.pages", f"{record.source} is an image: give one 'text', not 'pages'"))
                continue
            if info.exif_orientation not in (None, 1):
                problems.append(
                    Problem(record.source, f"EXIF orientation {info.exif_orientation}: the page is rotated upright when loaded", "warning")
                )
            files[record.source] = info
            good_records.append(record)
        problems += _leakage_problems(good_records, files)
        problems += _unreferenced_problems(root, {record.source for record in records})
        leaked = {p.location for p in problems if p.message.startswith("leakage")}
        good_records = [r for r in good_records if r.source not in leaked]
        return cls(root, data, good_records, files, problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def examples(self, split: str | None = None, business: str | None = None) -> list[PageExample]:
        """Every valid page of ``split`` (or of all splits), of ``business`` if given, in annotation order."""
        if split is not None and split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        pages: list[PageExample] = []
        for record in self.records:
            if (split is not None and record.split != split) or (business is not None and record.business != business):
                continue
            info = self.files[record.source]
            for page, text in enumerate(record.texts):
                pages.append(
                    PageExample(info.content_hash, record.source, page, text, record.split, record.category, record.business, info.kind)
                )
        return pages

    def load_image(self, example: PageExample) -> Image.Image:
        """The upright RGB image of ``example``."""
        return load_page(self.root / example.source, example.page, self.data)

    def iter_images(self, examples: list[PageExample]) -> Iterator[tuple[PageExample, Image.Image]]:
        """Yield ``(example, image)``, skipping (with a warning problem) pages that fail to load."""
        return self.iter_prepared(examples, lambda example, image: image)

    def iter_prepared(self, examples: list[PageExample], prepare: Callable[[PageExample, Image.Image], Any],
                      workers: int = 1) -> Iterator[tuple[PageExample, Any]]:
        """Yield ``(example, prepare(example, image))`` in order, skipping (with a warning problem) pages
        that fail to load. With ``workers`` > 1, pages are loaded and prepared by that many threads
        (decoding, rasterizing and resizing release the GIL), at most ``2 * workers`` pages ahead."""

        def load_and_prepare(example: PageExample) -> Any:
            try:
                image = self.load_image(example)
            except DatasetError as error:
                return error
            return prepare(example, image)

        results = map(load_and_prepare, examples) if workers <= 1 else map_in_threads(load_and_prepare, examples, workers)
        return self._skipping_failed(examples, results)

    def _skipping_failed(self, examples: list[PageExample], results: Iterator[Any]) -> Iterator[tuple[PageExample, Any]]:
        for example, result in zip(examples, results):
            if isinstance(result, DatasetError):
                self.problems.append(Problem(example.source, f"skipped: {result}", "warning"))
                continue
            yield example, result

    def manifest(self, business: str | None = None) -> Manifest:
        """The content-hash manifest of the valid documents (of ``business`` only, if given)."""
        return Manifest(
            [
                ManifestEntry(
                    self.files[r.source].content_hash,
                    r.source,
                    r.split,
                    r.category,
                    r.business,
                    len(r.texts),
                    hashlib.sha256(json.dumps(list(r.texts), ensure_ascii=False).encode("utf-8")).hexdigest(),
                )
                for r in self.records
                if business is None or r.business == business
            ]
        )

    def mix(self, business: str | None = None) -> DocumentMix:
        """Document and page counts by split x category x business (of ``business`` only, if given)."""
        mix = DocumentMix()
        for record in self.records:
            if business is not None and record.business != business:
                continue
            key = (record.split, record.category, record.business)
            mix.documents[key] += 1
            mix.pages[key] += len(record.texts)
        return mix


def _leakage_problems(records: list[DocumentRecord], files: dict[str, FileInfo]) -> list[Problem]:
    by_hash: dict[str, list[DocumentRecord]] = defaultdict(list)
    for record in records:
        by_hash[files[record.source].content_hash].append(record)
    problems = []
    for group in by_hash.values():
        splits = {r.split for r in group}
        if len(splits) > 1:
            listing = ", ".join(f"{r.source} ({r.split})" for r in group)
            for record in group:
                problems.append(Problem(record.source, f"leakage: the same image is in several splits: {listing}"))
        elif len(group) > 1:
            listing = ", ".join(r.source for r in group[1:])
            problems.append(Problem(group[0].source, f"duplicate content also at {listing}", "warning"))
    return problems


def _unreferenced_problems(root: Path, referenced: set[str]) -> list[Problem]:
    """Warnings for files in the split folders that no annotation names (e.g. left by a killed ``data add``)."""
    problems = []
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            source = path.relative_to(root).as_posix()
            if not path.is_file() or source in referenced or path.name == "metadata.jsonl":
                continue
            hint = ("a temporary file of an interrupted write; the next `data add` removes it" if path.name.endswith(".tmp")
                    else "no annotation names this file; it is not used")
            problems.append(Problem(source, hint, "warning"))
    return problems


def map_in_threads(function: Callable[[Any], Any], items: list[Any], workers: int) -> Iterator[Any]:
    """``map(function, items)`` computed by a pool of threads, in order, a bounded window ahead."""
    with ThreadPoolExecutor(workers, thread_name_prefix="ocrloop-pages") as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(function, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
