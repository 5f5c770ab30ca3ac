"""``OCRAgent``: read documents with the model that serves a business.

``OCRAgent.load(workspace, business=...)`` picks that business's champion, else the general
champion, else the base model; ``read_file`` OCRs every page of an image or PDF. The CLI's
``ocr`` command and any service call only this.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ocrloop.config import OcrloopConfig
from ocrloop.data.files import SUPPORTED_SUFFIXES, inspect_file, load_page
from ocrloop.errors import OcrloopError
from ocrloop.models import load_model
from ocrloop.models.base import OCRModel
from ocrloop.models.reading import ReadingSettings, resolve_reading


@dataclass
class PageText:
    page: int
    text: str
    seconds: float


@dataclass
class DocumentText:
    source: str
    model: str
    pages: list[PageText] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return "\n\n".join(page.text for page in self.pages)

    def to_json(self) -> dict:
        return {"source": self.source, "model": self.model,
                "pages": [{"page": p.page + 1, "text": p.text, "seconds": p.seconds} for p in self.pages]}


class OCRAgent:
    """A loaded OCR model plus the settings it reads pages with: its own saved ones, else the workspace's."""

    def __init__(self, bundle: OCRModel, model_name: str, config: OcrloopConfig):
        self.bundle = bundle
        self.model_name = model_name
        self.config = config
        self.reading, _ = self.settings()

    @classmethod
    def load(cls, workspace: str | Path = ".", *, business: str | None = None, model: str | None = None) -> "OCRAgent":
        """The agent for ``business`` in ``workspace`` (or for an explicit ``model``)."""
        from ocrloop.loop.recipe import serving_model
        from ocrloop.registry import Registry
        from ocrloop.workspace import Workspace

        config = Workspace.load(workspace).config
        if model is None:
            with Registry(config.registry_path) as registry:
                serving = serving_model(registry, config.base_model, business)
            model, name = serving.path, serving.name
        else:
            name = model
        return cls(load_model(model, backend=config.training.backend), name, config)

    def settings(self, *, prompt: str | None = None, resolution: str | None = None,
                 max_new_tokens: int | None = None) -> tuple[ReadingSettings, list[str]]:
        """The settings a read with these explicit values uses, and a note for each that differs from the model's own."""
        return resolve_reading(self.bundle.reading, ReadingSettings.from_training(self.config.training),
                               model_name=self.model_name, prompt=prompt, resolution=resolution, max_new_tokens=max_new_tokens)

    def read(self, images: list[Image.Image], *, prompt: str | None = None, resolution: str | None = None) -> list[str]:
        """OCR text of each image, in order."""
        reading, _ = self.settings(prompt=prompt, resolution=resolution)
        return self.bundle.read(images, reading)

    def read_file(self, path: str | Path, *, prompt: str | None = None, resolution: str | None = None) -> DocumentText:
        """OCR every page of an image or PDF file."""
        path = Path(path)
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise OcrloopError(f"{path}: unsupported format {path.suffix or '(none)'}")
        info, reason = inspect_file(path, self.config.data)
        if reason:
            raise OcrloopError(f"{path}: {reason}")
        document = DocumentText(str(path), self.model_name)
        for page in range(info.pages):
            started = time.perf_counter()
            (text,) = self.read([load_page(path, page, self.config.data)], prompt=prompt, resolution=resolution)
            document.pages.append(PageText(page, text, time.perf_counter() - started))
        return document

    async def process_document(self, path: str | Path) -> dict:
        """The plan's async entry point: OCR a file off the event loop; returns ``DocumentText.to_json()``."""
        document = await asyncio.to_thread(self.read_file, path)
        return {**document.to_json(), "text": document.markdown}
