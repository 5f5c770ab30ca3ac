"""What a running service holds (models, batcher, metrics, readiness), and how routes get it: ``ServiceDep``."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from PIL import Image

from ocrloop.agent import OCRAgent
from ocrloop.config import DataConfig, OcrloopConfig
from ocrloop.errors import OcrloopError
from ocrloop.serve.batcher import PageBatcher
from ocrloop.serve.champions import ChampionModels, UnknownModelVersion
from ocrloop.serve.metrics import ServiceMetrics
from ocrloop.workspace import known_businesses

log = logging.getLogger("ocrloop.serve")


class RequestRefused(Exception):
    """A request the service answers with a 4xx or 503 and one line."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


@dataclass
class Readiness:
    """Whether the general model is loaded and has read a page (``/readyz``)."""

    state: str = "loading"  # loading | ready | unavailable
    model: str | None = None
    reason: str | None = None
    seconds_to_read_a_page: float | None = None


@dataclass
class Service:
    """One service instance: built by ``create_app``, started and stopped by its lifespan."""

    config: OcrloopConfig
    engine: str = "model"
    metrics: ServiceMetrics = field(init=False)
    champions: ChampionModels = field(init=False)
    batcher: PageBatcher = field(init=False)
    page_limits: DataConfig = field(init=False)
    readiness: Readiness = field(default_factory=Readiness)
    in_progress: int = 0
    _businesses: tuple[float, set[str]] = (0.0, set())

    def __post_init__(self):
        settings = self.config.serve
        self.metrics = ServiceMetrics(self.config.registry_location, self.config.base_model)
        self.champions = ChampionModels(self.config, on_swap=lambda *_: self.metrics.model_swaps.inc())
        # --engine tesseract: one reader for every business, no registry to watch, no model versions.
        self.tesseract = OCRAgent.tesseract(self.config) if self.engine == "tesseract" else None
        self.batcher = PageBatcher(settings.max_batch_pages, settings.batch_wait_ms / 1000, on_batch=self.metrics.batch_pages.observe)
        self.page_limits = self.config.data.model_copy(update={"max_image_pixels": settings.max_image_pixels,
                                                               "max_file_bytes": settings.max_upload_bytes})

    def start(self) -> None:
        """Watch the registry for new champions; load the general model and read one page, off the event loop."""
        if self.tesseract is None:
            self.champions.start_watching(self.config.serve.champion_check_seconds)
        threading.Thread(target=self._warm_up, name="ocrloop-warm-up", daemon=True).start()

    def stop(self) -> None:
        self.champions.stop()
        self.batcher.close()

    def _warm_up(self) -> None:
        try:
            agent = self.tesseract or self.champions.agent(None)
            started = time.perf_counter()
            page = agent.prepare(Image.new("RGB", (256, 256), "white"))
            self.batcher.submit(agent, page, agent.reading.prompt, agent.reading.resolution).result()
            self.readiness = Readiness("ready", agent.model_name, seconds_to_read_a_page=time.perf_counter() - started)
            log.info("ready: %s read a page in %.2f s", agent.model_name, self.readiness.seconds_to_read_a_page)
        except Exception as error:  # noqa: BLE001 - reported by /readyz and by every OCR request
            self.readiness = Readiness("unavailable", reason=str(error).splitlines()[0] if str(error) else type(error).__name__)
            log.error("not ready: %s", self.readiness.reason)

    def agent(self, business: str | None, model: str | None = None) -> OCRAgent:
        """The agent serving ``business`` (or the registered version ``model``); 503 with the reason when its model
        cannot be loaded, 422 when no version has that name."""
        if self.tesseract is not None:
            if model is not None:
                raise RequestRefused(422, "this service reads with Tesseract (--engine tesseract): it has no model versions")
            return self.tesseract
        if model is not None:
            try:
                return self.champions.named(model)
            except UnknownModelVersion as error:
                raise RequestRefused(422, str(error)) from None
            except OcrloopError as error:
                raise RequestRefused(503, str(error)) from None
        try:
            return self.champions.agent(business)
        except OcrloopError as error:
            raise RequestRefused(503, f"no model to read with: {error}") from None

    def check_business(self, business: str | None) -> None:
        """422 unless ``business`` is one the registry knows (metrics labels and loaded models stay bounded)."""
        if business is None:
            return
        checked_at, known = self._businesses
        if business not in known and time.monotonic() - checked_at > 1.0:  # a miss re-reads, at most once a second
            known = known_businesses(self.config)
            self._businesses = (time.monotonic(), known)
        if business not in known:
            listing = ", ".join(sorted(known)) or "none yet"
            raise RequestRefused(422, f"business {business!r} is not known to this workspace (known: {listing}); "
                                      "leave it out to read with the general model")

    @contextmanager
    def admitted(self):
        """Count the request in; 429 when ``serve.max_concurrent_requests`` are already in progress."""
        limit = self.config.serve.max_concurrent_requests
        if self.in_progress >= limit:
            raise RequestRefused(429, f"too many requests in progress (serve.max_concurrent_requests = {limit}); retry shortly")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
