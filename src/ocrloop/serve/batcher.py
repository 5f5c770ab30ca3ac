"""One worker thread owns the GPU and reads pages of concurrent requests in batches.

Pages arrive prepared (``OCRAgent.prepare``: resized, normalized, the prompt's ids) by the threads that submit
them, so the worker only runs the model: the CPU work of the next pages overlaps the GPU work of this batch.

A page waits at most ``max_wait_seconds`` for others that share its model, prompt and resolution;
up to ``max_batch_pages`` of them are generated in one call. When a batch fails, each of its pages is
read alone, so a page the model cannot read fails only its own request. Each page carries the model it was
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


@dataclass
class _Page:
    agent: OCRAgent
    prepared: Any  # what agent.prepare made of the page
    prompt: str
    resolution: str
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return id(self.agent), self.prompt, self.resolution


class PageBatcher:
    """Batches pages from any number of threads onto one model-owning worker thread."""

    def __init__(self, max_batch_pages: int, max_wait_seconds: float,
                 on_batch: Callable[[int], None] | None = None):
        self.max_batch_pages = max_batch_pages
        self.max_wait_seconds = max_wait_seconds
        self.on_batch = on_batch  # called with the number of pages after each batch
        self._pages: deque[_Page] = deque()
        self._condition = threading.Condition()
        self._closed = False
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

    def _next_batch(self) -> list[_Page] | None:
        with self._condition:
            while not self._pages and not self._closed:
                self._condition.wait()
            if not self._pages:
                return None
            first = self._pages[0]
            deadline = first.enqueued + self.max_wait_seconds
            while not self._closed:
                same = sum(1 for page in self._pages if page.key == first.key)
                remaining = deadline - time.perf_counter()
                if same >= self.max_batch_pages or remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch = [page for page in self._pages if page.key == first.key][: self.max_batch_pages]
            for page in batch:
                self._pages.remove(page)
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._read(batch)
            except BaseException as error:  # noqa: BLE001 - one page spoiled the batch: read each alone
                if len(batch) == 1:
                    batch[0].future.set_exception(error)
                    continue
                for page in batch:
                    try:
                        self._read([page])
                    except BaseException as page_error:  # noqa: BLE001 - handed to that page's request only
                        page.future.set_exception(page_error)

    def _read(self, batch: list[_Page]) -> None:
        first = batch[0]
        texts = first.agent.read_prepared([page.prepared for page in batch], prompt=first.prompt, resolution=first.resolution)
        for page, text in zip(batch, texts):
            page.future.set_result(text)
        if self.on_batch:
            self.on_batch(len(batch))
