"""What a dataset is made of: documents (one file each) and their pages (one example each)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset, located precisely enough to fix it."""

    location: str
    message: str
    severity: str = "error"  # "error" blocks training; "warning" does not

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


@dataclass(frozen=True)
class DocumentRecord:
    """One labeled file as the annotation file describes it.

    ``source`` is the path relative to the dataset root, with forward slashes. ``texts`` holds
    one ground-truth text per page (a single entry for an image).
    """

    source: str
    texts: tuple[str, ...]
    split: str
    category: str
    business: str
    location: str


@dataclass(frozen=True)
class PageExample:
    """One training/evaluation example: a page of a document and its ground truth."""

    document_hash: str
    source: str
    page: int
    text: str
    split: str
    category: str
    business: str
    kind: str = "image"  # "image" or "pdf"

    @property
    def example_id(self) -> str:
        """Stable identity of the page: content hash of its file plus page number."""
        return f"{self.document_hash}:{self.page}"


@dataclass
class FileInfo:
    """What inspecting a file found: its content hash, kind, page count and pixel sizes."""

    content_hash: str
    kind: str
    page_sizes: list[tuple[int, int]] = field(default_factory=list)
    exif_orientation: int | None = None

    @property
    def pages(self) -> int:
        return len(self.page_sizes)
