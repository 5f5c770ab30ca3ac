"""Tesseract 5 as the yardstick: an off-the-shelf OCR engine read through the same evaluation code.

Tesseract writes plain text, not markdown; compare it with ``--strip-markdown`` so that markup is not
counted against it.
"""

from __future__ import annotations

from typing import Callable

from ocrloop.data.dataset import Dataset
from ocrloop.data.records import PageExample
from ocrloop.errors import OcrloopError

ENGINE = "tesseract"


def _pytesseract():
    try:
        import pytesseract
    except ImportError:
        raise OcrloopError("pytesseract is not installed: `pip install pytesseract` (a dependency of ocrloop)") from None

    try:
        pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError:
        raise OcrloopError("tesseract is not installed: `apt-get install tesseract-ocr` (`make test` installs it)") from None
    return pytesseract


def tesseract_name() -> str:
    """``tesseract-<version>``, the name its evaluations are recorded under."""
    return f"{ENGINE}-{_pytesseract().get_tesseract_version()}"


def read_with_tesseract(dataset: Dataset, examples: list[PageExample], *, language: str = "eng",
                        progress: Callable[[int], None] | None = None) -> tuple[list[PageExample], list[str]]:
    """Tesseract's text for every page that loads (in order), like ``evaluate.evaluator.read_pages``."""
    reader = TesseractReader(language)
    read, texts = [], []
    for example, image in dataset.iter_images(examples):
        texts += reader.read([image])
        read.append(example)
        if progress:
            progress(len(read))
    return read, texts


class TesseractReader:
    """Tesseract where an agent expects a model: ``read(images, reading)`` gives each page's text."""

    reading = None  # no saved reading settings: prompt and resolution do not apply

    def __init__(self, language: str = "eng"):
        self.language = language
        self.name = tesseract_name()

    def read(self, images, reading=None) -> list[str]:
        pytesseract = _pytesseract()
        return [pytesseract.image_to_string(image, lang=self.language).strip() for image in images]

    def prepare(self, image, reading=None):
        """Nothing to do ahead of reading: Tesseract takes the image itself."""
        return image

    def read_prepared(self, images, reading=None) -> list[str]:
        return self.read(images, reading)
