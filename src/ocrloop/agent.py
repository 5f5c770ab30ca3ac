"""``OCRAgent``: read documents with the model that serves a business, and hand out only what the PII policy allows.

``OCRAgent.load(workspace, business=...)`` picks that business's champion, else the general
champion, else the base model (``engine="tesseract"``: Tesseract instead of a model); ``read_file``
OCRs every page of an image or PDF; ``protect`` applies the PII policy to a page's text. The CLI's
``ocr`` command and the service read only through this.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, Iterator

from PIL import Image

from ocrloop.config import OcrloopConfig
from ocrloop.data.files import SUPPORTED_SUFFIXES, inspect_file, load_page
from ocrloop.errors import OcrloopError
from ocrloop.models import load_model
from ocrloop.models.base import OCRModel
from ocrloop.models.reading import ReadingSettings, resolve_reading
from ocrloop.pii import PiiPolicy, PiiRejected, apply_pii_policy

ENGINES = ("model", "tesseract")


@dataclass
class PageText:
    page: int
    text: str
    seconds: float
    width: int = 0
    height: int = 0
    pii: dict[str, int] = field(default_factory=dict)


@dataclass
class DocumentText:
    source: str
    model: str
    pages: list[PageText] = field(default_factory=list)

    @property
    def markdown(self) -> str:
        return "\n\n".join(page.text for page in self.pages)

    @property
    def pii(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for page in self.pages:
            for kind, count in page.pii.items():
                counts[kind] = counts.get(kind, 0) + count
        return counts

    def to_json(self) -> dict:
        """The service's answer shape (``serve.schemas.OcrAnswer``), less what only a request has."""
        return {"source": self.source, "model": self.model,
                "pages": [{"page": p.page + 1, "width": p.width, "height": p.height, "text": p.text,
                           "seconds": round(p.seconds, 4)} for p in self.pages],
                "text": self.markdown, "pii": self.pii, "seconds": round(sum(p.seconds for p in self.pages), 4)}


class OCRAgent:
    """A loaded OCR model plus the settings it reads pages with: its own saved ones, else the workspace's."""

    def __init__(self, bundle: OCRModel, model_name: str, config: OcrloopConfig):
        self.bundle = bundle
        self.model_name = model_name
        self.config = config
        self.reading, _ = self.settings()
        self._decoders: dict[tuple[str, str], Any] = {}

    @classmethod
    def load(cls, workspace: str | Path = ".", *, business: str | None = None, model: str | None = None,
             engine: str = "model") -> "OCRAgent":
        """The agent for ``business`` in ``workspace`` (or for an explicit ``model``, or Tesseract)."""
        from ocrloop.registry.champions import serving_model
        from ocrloop.registry import Registry
        from ocrloop.workspace import Workspace

        config = Workspace.load(workspace).config
        if engine == "tesseract":
            return cls.tesseract(config)
        if engine != "model":
            raise OcrloopError(f"unknown engine {engine!r}; use {' or '.join(ENGINES)}")
        if model is None:
            with Registry(config.registry_location) as registry:
                serving = serving_model(registry, config.base_model, business)
            model, name = serving.path, serving.name
        else:
            name = model
        return cls(load_model(model, backend=config.training.backend), name, config)

    @classmethod
    def tesseract(cls, config: OcrloopConfig) -> "OCRAgent":
        """An agent that reads with Tesseract 5 (prompt and resolution do not apply)."""
        from ocrloop.evaluate.tesseract import TesseractReader

        reader = TesseractReader()
        return cls(reader, reader.name, config)

    @property
    def resolutions(self) -> tuple[str, ...] | None:
        """The resolution modes this agent reads at (None: any, it has none)."""
        family = getattr(self.bundle, "family", None)
        return tuple(family.resolutions) if family is not None else None

    def protect(self, text: str, policy: PiiPolicy | None = None) -> tuple[str, dict[str, int]]:
        """``text`` as ``policy`` (default ``serve.pii_policy``) lets it out, and the personal data found per kind.

        Raises ``PiiRejected`` (kinds and counts, never values) under ``reject``."""
        return apply_pii_policy(text, policy or self.config.serve.pii_policy)

    def settings(self, *, prompt: str | None = None, resolution: str | None = None,
                 max_new_tokens: int | None = None) -> tuple[ReadingSettings, list[str]]:
        """The settings a read with these explicit values uses, and a note for each that differs from the model's own."""
        return resolve_reading(self.bundle.reading, ReadingSettings.from_training(self.config.training),
                               model_name=self.model_name, prompt=prompt, resolution=resolution, max_new_tokens=max_new_tokens)

    def read(self, images: list[Image.Image], *, prompt: str | None = None, resolution: str | None = None) -> list[str]:
        """OCR text of each image, in order."""
        reading, _ = self.settings(prompt=prompt, resolution=resolution)
        return self.bundle.read(images, reading)

    def prepare(self, image: Image.Image, *, prompt: str | None = None, resolution: str | None = None) -> Any:
        """The CPU work of reading ``image`` done ahead (any thread); ``read_prepared`` then does the rest."""
        reading, _ = self.settings(prompt=prompt, resolution=resolution)
        return self.bundle.prepare(image, reading)

    def read_prepared(self, pages: list[Any], *, prompt: str | None = None, resolution: str | None = None) -> list[str]:
        """``read`` of pages ``prepare``d with the same prompt and resolution."""
        reading, _ = self.settings(prompt=prompt, resolution=resolution)
        return self.bundle.read_prepared(pages, reading)

    def decoder(self, slots: int, *, prompt: str | None = None, resolution: str | None = None) -> Any:
        """The ``ContinuousDecoder`` of ``slots`` pages this agent reads with at this prompt and resolution (one per
        pair, kept with the agent), or None where pages cannot join a running decode: Tesseract, a model without
        ``fast_decode``, or ``serve.continuous_batching`` off."""
        bundle = self.bundle
        if not (self.config.serve.continuous_batching and getattr(bundle, "fast_decode", False)):
            return None
        from ocrloop.models.continuous import ContinuousDecoder

        reading, _ = self.settings(prompt=prompt, resolution=resolution)
        key = (reading.prompt, reading.resolution)
        if key not in self._decoders:
            self._decoders[key] = ContinuousDecoder(bundle, reading, slots)
        return self._decoders[key]

    def read_file(self, path: str | Path, *, prompt: str | None = None, resolution: str | None = None,
                  pii_policy: PiiPolicy | None = None) -> DocumentText:
        """OCR every page of an image or PDF file, one page per generation; each page's text as ``pii_policy`` lets
        it out (see ``protect``). Raises ``OcrloopError`` for a file it cannot read, ``PiiRejected`` under reject."""
        ((_, result),) = self.read_files([path], prompt=prompt, resolution=resolution, pii_policy=pii_policy)
        if isinstance(result, Exception):
            raise result
        return result

    def read_files(self, paths: list[str | Path], *, prompt: str | None = None, resolution: str | None = None,
                   pii_policy: PiiPolicy | None = None, batch_pages: int = 1) -> Iterator[tuple[Path, DocumentText | Exception]]:
        """``read_file`` for each of ``paths``, in order, reading up to ``batch_pages`` pages (of one or several
        documents) per generation. Yields ``(path, DocumentText)``, or ``(path, error)`` for a document that could
        not be read (``OcrloopError``) or was refused (``PiiRejected``); the other documents go on.

        A thread loads and prepares the next batch's pages while the model reads this one. Where the agent decodes
        continuously (``decoder``), a page joins the decode as soon as a slot is free, whatever its document."""
        decoder = self.decoder(batch_pages, prompt=prompt, resolution=resolution) if batch_pages > 1 else None
        if decoder is not None:
            yield from self._read_continuously(decoder, paths, prompt, resolution, pii_policy, batch_pages)
            return
        read: dict[tuple[int, int], tuple[str, float, tuple[int, int]]] = {}  # text, seconds, size
        for chunk, failed, batch, last in _ahead(self._prepared_batches(paths, prompt, resolution, batch_pages)):
            if batch:
                started = time.perf_counter()
                texts = self.read_prepared([prepared for _, _, _, prepared in batch], prompt=prompt, resolution=resolution)
                share = (time.perf_counter() - started) / len(batch)  # a page's share of its batch's time
                read.update({(index, page): (text, share, size) for (index, page, size, _), text in zip(batch, texts)})
            if last:
                yield from self._documents(chunk, failed, read, pii_policy)
                read.clear()

    def _read_continuously(self, decoder: Any, paths: list[str | Path], prompt: str | None, resolution: str | None,
                           pii_policy: PiiPolicy | None, batch_pages: int) -> Iterator[tuple[Path, DocumentText | Exception]]:
        """``read_files`` through ``decoder``. Pages join when a quarter of the slots is free (or none is decoding),
        so joining pages share their prefill; each page is charged its share of the time of every prefill and step
        it was in. Documents are yielded in order, each once all its pages are read."""
        chunks: deque[list] = deque()  # [number, chunk, failed documents, all its batches seen], in input order
        waiting: deque[tuple[tuple[int, int, int], tuple[int, int], Any]] = deque()  # (chunk number, document, page)
        read: dict[tuple[int, int, int], tuple[str, float, tuple[int, int]]] = {}
        spent: dict[tuple[int, int, int], float] = {}
        sizes: dict[tuple[int, int, int], tuple[int, int]] = {}
        source = _ahead(self._prepared_batches(paths, prompt, resolution, batch_pages))
        exhausted = False
        try:
            while True:
                while not exhausted and len(waiting) < decoder.free:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    chunk, failed, batch, last = item
                    if not chunks or chunks[-1][1] is not chunk:
                        chunks.append([(chunks[-1][0] + 1) if chunks else 0, chunk, failed, False])
                    number = chunks[-1][0]
                    chunks[-1][3] = last
                    waiting.extend(((number, index, page), size, prepared) for index, page, size, prepared in batch)
                started = time.perf_counter()
                if waiting and decoder.free and (decoder.free * 4 >= decoder.slots or not decoder.active or exhausted):
                    joining = [waiting.popleft() for _ in range(min(decoder.free, len(waiting)))]
                    charged = [key for key, _, _ in joining]
                    sizes.update((key, size) for key, size, _ in joining)
                    finished = decoder.admit([prepared for _, _, prepared in joining], charged)
                elif decoder.active:
                    charged = decoder.tags
                    finished = decoder.step()
                else:
                    charged, finished = [], []
                for key in charged:
                    spent[key] = spent.get(key, 0.0) + (time.perf_counter() - started) / len(charged)
                for key, text in finished:  # a page of a document that failed meanwhile may finish after its chunk
                    entry = (text, spent.pop(key), sizes.pop(key))
                    if chunks and key[0] >= chunks[0][0]:
                        read[key] = entry
                while chunks and chunks[0][3] and all(
                        (chunks[0][0], index, page) in read for index, (_, counted) in enumerate(chunks[0][1])
                        if index not in chunks[0][2] for page in range(counted)):
                    number, chunk, failed, _ = chunks.popleft()
                    mine = {(index, page): read.pop((n, index, page)) for n, index, page in list(read) if n == number}
                    yield from self._documents(chunk, failed, mine, pii_policy)
                if exhausted and not waiting and not decoder.active and not chunks:
                    return
        finally:
            source.close()

    def _chunks(self, paths: list[str | Path], batch_pages: int) -> Iterator[list[tuple[Path, int | OcrloopError]]]:
        """Consecutive documents of up to ``batch_pages`` pages together (or one longer document), each with its page
        count or the error that makes it unreadable."""
        chunk: list[tuple[Path, int | OcrloopError]] = []
        pages = 0
        for path in map(Path, paths):
            counted = self._page_count(path)
            count = counted if isinstance(counted, int) else 0
            if chunk and pages + count > batch_pages:
                yield chunk
                chunk, pages = [], 0
            chunk.append((path, counted))
            pages += count
        if chunk:
            yield chunk

    def _prepared_batches(self, paths: list[str | Path], prompt: str | None, resolution: str | None,
                          batch_pages: int) -> Iterator[tuple[list, dict, list, bool]]:
        """Each chunk's pages loaded and prepared a batch at a time (a long PDF is never all in memory):
        ``(chunk, failed documents, batch, last of its chunk)``, a batch being ``(document index, page, size,
        prepared page)`` entries."""
        for chunk in self._chunks(paths, batch_pages):
            failed = {index: counted for index, (_, counted) in enumerate(chunk) if isinstance(counted, OcrloopError)}
            wanted = [(index, page) for index, (_, counted) in enumerate(chunk) if index not in failed
                      for page in range(counted)]
            starts = range(0, len(wanted), batch_pages)
            for number, start in enumerate(starts):
                batch = []
                for index, page in wanted[start:start + batch_pages]:
                    if index in failed:
                        continue
                    try:
                        image = load_page(chunk[index][0], page, self.config.data)
                    except OcrloopError as error:
                        failed[index] = error
                        continue
                    batch.append((index, page, image.size, self.prepare(image, prompt=prompt, resolution=resolution)))
                yield chunk, failed, [entry for entry in batch if entry[0] not in failed], number == len(starts) - 1
            if not starts:  # every document of the chunk failed: report them all the same
                yield chunk, failed, [], True

    def _documents(self, chunk: list[tuple[Path, int | OcrloopError]], failed: dict, read: dict,
                   pii_policy: PiiPolicy | None) -> Iterator[tuple[Path, DocumentText | Exception]]:
        for index, (path, counted) in enumerate(chunk):
            if index in failed:
                yield path, failed[index]
                continue
            document = DocumentText(str(path), self.model_name)
            try:
                for page in range(counted):
                    text, seconds, size = read[(index, page)]
                    shown, found = self.protect(text, pii_policy)
                    document.pages.append(PageText(page, shown, seconds, *size, found))
            except PiiRejected as rejected:
                yield path, rejected
                continue
            yield path, document

    def _page_count(self, path: Path) -> int | OcrloopError:
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            return OcrloopError(f"{path}: unsupported format {path.suffix or '(none)'}")
        info, reason = inspect_file(path, self.config.data)
        return OcrloopError(f"{path}: {reason}") if reason else info.pages

    async def process_document(self, path: str | Path) -> dict:
        """The plan's async entry point: OCR a file off the event loop; returns ``DocumentText.to_json()``."""
        document = await asyncio.to_thread(self.read_file, path)
        return document.to_json()


def _ahead(items: Iterator, depth: int = 1) -> Iterator:
    """``items``, produced by a thread that stays up to ``depth`` items ahead of the consumer; an exception raised
    producing them is raised here, in order. Closing this generator early stops the thread."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put((done, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            queue.put((done, error))

    thread = threading.Thread(target=produce, name="ocrloop-prepare", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting to put
            try:
                queue.get_nowait()
            except Empty:
                pass
            thread.join(timeout=0.1)


def output_paths(files: list[Path], out: Path | None, suffix: str) -> dict[Path, Path | None]:
    """Where each input's result goes under ``out`` (None: printed): ``NAME.suffix``, or ``NAME-<hash>.suffix`` for
    inputs whose names collide (``a/x.png`` and ``b/x.png``), so no result overwrites another."""
    if out is None:
        return {f: None for f in files}
    counts = Counter(f.stem for f in files)
    taken = {stem for stem, count in counts.items() if count > 1}

    def name(path: Path) -> str:
        if path.stem not in taken:
            return path.stem
        return f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"

    return {f: out / f"{name(f)}.{suffix}" for f in files}


# Results are NAME.md or NAME.json: an index ending in .jsonl never takes a result's name (or a glob's place).
INDEX = "index.jsonl"


def write_index(out: Path, files: list[Path], targets: dict[Path, Path | None]) -> Path:
    """``out/index.jsonl``: one line per input, in input order, with its result file and whether the result exists
    (a sharded or interrupted batch is merged here in order, however its documents were shared out)."""
    from ocrloop.atomic import atomic_write_text

    lines = [json.dumps({"input": str(f), "output": targets[f].name, "done": targets[f].exists()}, ensure_ascii=False)
             for f in files]
    atomic_write_text(out / INDEX, "".join(line + "\n" for line in lines))
    return out / INDEX
