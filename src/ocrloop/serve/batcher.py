"""One worker thread owns the GPU and reads pages of concurrent requests.

Pages arrive prepared (``OCRAgent.prepare``: resized, normalized, the prompt's ids) by the threads that submit
them, so the worker only runs the model: the CPU work of the next pages overlaps the GPU work of this batch.

Where the agent decodes continuously (``OCRAgent.decoder``: ``serve.fast_decode`` with continuous batching), a page
joins the running decode at its next step and its answer leaves the step it finishes: a short page never waits for
a long one, and no page waits for a batch to end. Pages that arrive while pages decode are admitted together once
they fill the free slots or the oldest has waited ``max_wait_seconds``.

Otherwise pages are read in batches: a page waits at most ``max_wait_seconds`` for others that share its model,
prompt and resolution; up to ``max_batch_pages`` of them are generated in one call.

When a batch (or an admission) fails, each of its pages is read alone, so a page the model cannot read fails only
its own request; a decode step that fails fails the pages decoding in it. Each page carries the model it was
submitted with, so a champion swapped in meanwhile never changes a request already accepted.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ocrloop.agent import OCRAgent


_UNKNOWN = object()


@dataclass
class _Page:
    agent: OCRAgent
    prepared: Any  # what agent.prepare made of the page
    prompt: str
    resolution: str
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    decoder: Any = _UNKNOWN  # the agent's continuous decoder for it (None: read in batches), once looked up

    @property
    def key(self) -> tuple:
        return id(self.agent), self.prompt, self.resolution


class PageBatcher:
    """Pages from any number of threads, decoded continuously or in batches on one model-owning worker thread."""

    def __init__(self, max_batch_pages: int, max_wait_seconds: float,
                 on_batch: Callable[[int], None] | None = None):
        self.max_batch_pages = max_batch_pages
        self.max_wait_seconds = max_wait_seconds
        self.on_batch = on_batch  # called with the number of pages after each batch
        self._pages: deque[_Page] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._decoding: dict[Any, dict[int, _Page]] = {}  # decoders with pages in them, by tag (worker thread only)
        self._worker = threading.Thread(target=self._run, name="ocrloop-batcher", daemon=True)
        self._worker.start()

    def submit(self, agent: OCRAgent, prepared: Any, prompt: str, resolution: str) -> Future:
        """Queue one page ``prepared`` by ``agent`` with this prompt and resolution; the future resolves to its text
        (or the error that reading it raised)."""
        page = _Page(agent, prepared, prompt, resolution)
        with self._condition:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._pages.append(page)
            self._condition.notify()
        return page.future

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join(timeout=30)

    def _decoder(self, page: _Page) -> Any:
        # Looked up once per page, on the worker thread: a page may wait through many decode steps.
        if page.decoder is _UNKNOWN:
            page.decoder = page.agent.decoder(self.max_batch_pages, prompt=page.prompt, resolution=page.resolution)
        return page.decoder

    def _next_work(self) -> tuple[dict[Any, list[_Page]], list[_Page]] | None:
        """Pages to admit to each running decoder, and a batch to read; None once closed with nothing left."""
        with self._condition:
            while not self._pages and not self._decoding and not self._closed:
                self._condition.wait()
            if not self._pages and not self._decoding:
                return None
            if not self._decoding:  # nothing is running: the first page waits for company, as a batch would
                first = self._pages[0]
                deadline = first.enqueued + self.max_wait_seconds
                while not self._closed:
                    same = sum(1 for page in self._pages if page.key == first.key)
                    remaining = deadline - time.perf_counter()
                    if same >= self.max_batch_pages or remaining <= 0:
                        break
                    self._condition.wait(remaining)
            admissions: dict[Any, list[_Page]] = {}
            batch: list[_Page] = []
            for page in list(self._pages):
                decoder = self._decoder(page)
                if decoder is None:
                    if not batch or (page.key == batch[0].key and len(batch) < self.max_batch_pages):
                        batch.append(page)
                        self._pages.remove(page)
                    continue
                joining = admissions.setdefault(decoder, [])
                if len(joining) < decoder.free:
                    joining.append(page)
            now = time.perf_counter()
            for decoder, joining in list(admissions.items()):
                # while pages decode, newcomers gather until they fill the free slots or the oldest waited enough
                ready = (decoder not in self._decoding or len(joining) >= decoder.free
                         or now - joining[0].enqueued >= self.max_wait_seconds)
                if not ready or not joining:
                    del admissions[decoder]
                    continue
                for page in joining:
                    self._pages.remove(page)
            return admissions, batch

    def _run(self) -> None:
        while (work := self._next_work()) is not None:
            admissions, batch = work
            if batch:
                _alone_on_failure(batch, self._read)
            for decoder, pages in admissions.items():
                self._admit(decoder, pages)
            for decoder in list(self._decoding):
                try:
                    finished = decoder.step()
                except BaseException as error:  # noqa: BLE001 - the pages decoding in it fail, the service goes on
                    for tag in decoder.abandon():
                        self._decoding[decoder].pop(tag).future.set_exception(error)
                    finished = []
                self._deliver(decoder, finished)

    def _admit(self, decoder: Any, pages: list[_Page]) -> None:
        def admit(group: list[_Page]) -> None:
            self._deliver(decoder, decoder.admit([page.prepared for page in group], [id(page) for page in group]), group)

        _alone_on_failure(pages, admit)
        if self.on_batch:
            self.on_batch(decoder.active)

    def _deliver(self, decoder: Any, finished: list[tuple[int, str]], admitted: list[_Page] = ()) -> None:
        """Record pages just admitted to ``decoder`` and resolve those that ``finished``; an idle decoder is forgotten
        and gives its cache's memory back (one per model version, prompt and mode would otherwise stay)."""
        running = self._decoding.setdefault(decoder, {})
        running.update((id(page), page) for page in admitted)
        for tag, text in finished:
            running.pop(tag).future.set_result(text)
        if not running:
            del self._decoding[decoder]
            decoder.release()

    def _read(self, batch: list[_Page]) -> None:
        first = batch[0]
        texts = first.agent.read_prepared([page.prepared for page in batch], prompt=first.prompt, resolution=first.resolution)
        for page, text in zip(batch, texts):
            page.future.set_result(text)
        if self.on_batch:
            self.on_batch(len(batch))


def _alone_on_failure(pages: list[_Page], read: Callable[[list[_Page]], None]) -> None:
    """``read(pages)``; if that raises, each page alone, so a page that spoils its group fails only its own request."""
    try:
        read(pages)
    except BaseException as error:  # noqa: BLE001 - one page spoiled the group: each is read alone
        if len(pages) == 1:
            pages[0].future.set_exception(error)
            return
        for page in pages:
            try:
                read([page])
            except BaseException as page_error:  # noqa: BLE001 - handed to that page's request only
                page.future.set_exception(page_error)
