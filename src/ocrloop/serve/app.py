"""``ocrloop serve``: OCR over HTTP with the champions of the registry.

Routes: ``POST /v1/ocr`` (an image or PDF, as a multipart ``file`` field or as the raw body; options
``prompt``, ``mode``, ``business``, ``format`` = ``json``|``md``, ``pii_policy`` as query or form
fields), ``GET /v1/models``, ``GET /healthz``, ``GET /metrics``. Every refusal is a 4xx with one
``{"error": ...}`` line: 413 for size, pixel and page limits, 415 for formats, 422 for bad options,
unreadable files and rejected personal data, 429 when ``serve.max_concurrent_requests`` are running.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from ocrloop.config import OcrloopConfig, TrainingConfig
from ocrloop.data.files import PDF_SUFFIXES, SUPPORTED_SUFFIXES, inspect_file, load_page
from ocrloop.errors import OcrloopError, RegistryError
from ocrloop.registry import Registry
from ocrloop.registry.store import business_label
from ocrloop.serve.batcher import PageBatcher
from ocrloop.serve.champions import ChampionModels
from ocrloop.serve.metrics import ServiceMetrics
from ocrloop.serve.pii import PiiRejected, apply_pii_policy

log = logging.getLogger("ocrloop.serve")

PROMPTS = get_args(TrainingConfig.model_fields["prompt"].annotation)
_SUFFIX_BY_TYPE = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/tiff": ".tiff",
                   "image/bmp": ".bmp", "application/pdf": ".pdf"}


class RequestRefused(Exception):
    """A request the service answers with a 4xx and one line."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


def create_app(config: OcrloopConfig) -> FastAPI:
    """The service for the workspace described by ``config`` (models load on first use)."""
    settings = config.serve
    metrics = ServiceMetrics(config.registry_path, config.base_model)
    champions = ChampionModels(config, on_swap=lambda *_: metrics.model_swaps.inc())
    batcher = PageBatcher(settings.max_batch_pages, settings.batch_wait_ms / 1000,
                          on_batch=metrics.batch_pages.observe)
    page_limits = config.data.model_copy(update={"max_image_pixels": settings.max_image_pixels,
                                                 "max_file_bytes": settings.max_upload_bytes})
    active = {"requests": 0}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        champions.start_watching(settings.champion_check_seconds)
        try:
            yield
        finally:
            champions.stop()
            batcher.close()

    app = FastAPI(title="ocrloop", lifespan=lifespan)
    app.state.champions, app.state.metrics = champions, metrics

    @app.exception_handler(RequestRefused)
    async def refused(_request: Request, error: RequestRefused) -> JSONResponse:
        return JSONResponse({"error": str(error), **error.extra}, status_code=error.status)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = route.path if route is not None else "unmatched"
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz() -> dict:
        # Probes poll this often: a cheap read proves the registry opens, no full integrity scan.
        try:
            with Registry(config.registry_path) as registry:
                registry.champion()
            registry_ok = True
        except (RegistryError, sqlite3.DatabaseError):
            registry_ok = False
        return {"status": "ok" if registry_ok else "degraded", "registry": registry_ok, "serving": champions.serving(),
                "requests_in_progress": active["requests"]}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        exposition = await asyncio.to_thread(metrics.exposition)
        return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        with Registry(config.registry_path) as registry:
            rows = registry.models()
            businesses = sorted({p["business"] for p in registry.promotions()})
            champion_names = {business: registry.champion(business) for business in businesses}
        return {
            "base_model": config.base_model,
            "champions": {business_label(b): name for b, name in champion_names.items() if name},
            "serving": {business_label(b): name for b, name in champions.serving().items()},
            "versions": [{"name": r["name"], "family": r["family"], "business": r["business"], "created_at": r["created_at"],
                          "base_model": r["base_model"]} for r in rows],
        }

    @app.post("/v1/ocr")
    async def ocr(request: Request) -> Response:
        if active["requests"] >= settings.max_concurrent_requests:
            raise RequestRefused(429, f"too many requests in progress (serve.max_concurrent_requests = "
                                      f"{settings.max_concurrent_requests}); retry shortly")
        active["requests"] += 1
        try:
            return await _ocr(request)
        finally:
            active["requests"] -= 1

    async def _ocr(request: Request) -> Response:
        started = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
            raise RequestRefused(413, f"upload of {declared} bytes is over the limit of {settings.max_upload_bytes} bytes")
        options = dict(request.query_params)
        content_type = request.headers.get("content-type", "")
        with tempfile.TemporaryDirectory(prefix="ocrloop-upload-") as scratch:
            if content_type.startswith("multipart/form-data"):
                form = await request.form(max_files=1, max_fields=16)
                upload = form.get("file")
                options.update({k: v for k, v in form.items() if isinstance(v, str)})
                if not isinstance(upload, UploadFile):
                    raise RequestRefused(422, "no file: send the document as the multipart field `file`")
                suffix = Path(upload.filename or "").suffix.lower() or _SUFFIX_BY_TYPE.get(upload.content_type or "", "")
                body = await upload.read(settings.max_upload_bytes + 1)
            else:
                suffix = _SUFFIX_BY_TYPE.get(content_type.split(";")[0].strip(), "")
                body = await request.body()
            if len(body) > settings.max_upload_bytes:
                raise RequestRefused(413, f"upload is over the limit of {settings.max_upload_bytes} bytes")
            if suffix not in SUPPORTED_SUFFIXES:
                raise RequestRefused(415, f"unsupported format {suffix or content_type or '(unknown)'}; "
                                          f"send one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
            prompt, mode, business, output_format, policy = _options(options, config)
            path = Path(scratch) / f"upload{suffix}"
            path.write_bytes(body)
            info, reason = await asyncio.to_thread(inspect_file, path, page_limits)
            if reason:
                raise RequestRefused(413 if "over the limit" in reason else 422, f"{'document' if suffix in PDF_SUFFIXES else 'image'}: {reason}")
            if info.pages > settings.max_pages:
                raise RequestRefused(413, f"document has {info.pages} pages, over the limit of {settings.max_pages}")
            agent = await asyncio.to_thread(champions.agent, business)
            reading, _ = agent.settings(prompt=prompt, resolution=mode)  # unset options: the model's own settings
            prompt, mode = reading.prompt, reading.resolution
            if mode not in agent.bundle.family.resolutions:
                raise RequestRefused(422, f"mode {mode!r} is not available for {agent.bundle.family.name}; "
                                          f"use one of {', '.join(agent.bundle.family.resolutions)}")
            texts, seconds = await _read_pages(agent, path, info.pages, prompt, mode)
        pages, pii_counts = [], {}
        for index, (text, page_seconds) in enumerate(zip(texts, seconds)):
            try:
                shown, found = apply_pii_policy(text, policy)
            except PiiRejected as rejected:
                found = rejected.counts
                for kind, count in found.items():
                    metrics.pii.labels(kind).inc(count)
                raise RequestRefused(422, f"page {index + 1}: {rejected} (pii_policy=reject)", pii=found) from None
            for kind, count in found.items():
                metrics.pii.labels(kind).inc(count)
                pii_counts[kind] = pii_counts.get(kind, 0) + count
            pages.append({"page": index + 1, "text": shown, "seconds": round(page_seconds, 4)})
        metrics.pages.labels(business or "all").inc(len(pages))
        total = time.perf_counter() - started
        markdown = "\n\n".join(page["text"] for page in pages)
        if output_format == "md":
            return PlainTextResponse(markdown + "\n", media_type="text/markdown; charset=utf-8", headers={
                "X-Ocrloop-Model": agent.model_name, "X-Ocrloop-Pages": str(len(pages)), "X-Ocrloop-Seconds": f"{total:.3f}"})
        return JSONResponse({"model": agent.model_name, "business": business, "prompt": prompt, "mode": mode,
                             "pages": pages, "text": markdown, "pii": pii_counts, "pii_policy": policy,
                             "seconds": round(total, 4)})

    async def _read_pages(agent, path: Path, count: int, prompt: str, mode: str) -> tuple[list[str], list[float]]:
        futures, submitted = [], []
        for page in range(count):
            image = await asyncio.to_thread(load_page, path, page, page_limits)
            submitted.append(time.perf_counter())
            futures.append(asyncio.wrap_future(batcher.submit(agent, image, prompt, mode)))
        try:
            texts = await asyncio.gather(*futures)
        except OcrloopError as error:
            raise RequestRefused(422, str(error)) from None
        done = time.perf_counter()
        seconds = [done - t for t in submitted]
        for value in seconds:
            metrics.page_latency.observe(value)
        return list(texts), seconds

    return app


def _options(options: dict[str, str], config: OcrloopConfig) -> tuple[str | None, str | None, str | None, str, str]:
    """The request's options; prompt and mode are None when not given (the serving model's own are used)."""
    prompt = options.get("prompt") or None
    if prompt is not None and prompt not in PROMPTS:
        raise RequestRefused(422, f"prompt {prompt!r} is not one of {', '.join(PROMPTS)}")
    mode = options.get("mode") or options.get("resolution") or None
    output_format = options.get("format", "json")
    if output_format not in ("json", "md"):
        raise RequestRefused(422, f"format {output_format!r} is not json or md")
    policy = options.get("pii_policy") or config.serve.pii_policy
    if policy not in ("allow", "redact", "reject"):
        raise RequestRefused(422, f"pii_policy {policy!r} is not allow, redact or reject")
    business = options.get("business") or None
    if business is not None and (len(business) > 64 or not business.replace("_", "").replace("-", "").isalnum()):
        raise RequestRefused(422, "business must be a short name of letters, digits, - and _")
    return prompt, mode, business, output_format, policy


def serve(config: OcrloopConfig, host: str | None = None, port: int | None = None) -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host or config.serve.host, port=config.serve.port if port is None else port,
                log_level="info")
