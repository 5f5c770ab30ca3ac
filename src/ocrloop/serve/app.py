"""``ocrloop serve``: OCR over HTTP with the champions of the registry.

Routes: ``POST /v1/ocr`` (routes/ocr.py), ``GET /v1/models``, ``/healthz`` (liveness), ``/readyz`` (a model
is loaded and has read a page), ``/metrics`` (Prometheus), and a web page at ``/`` and ``/runs`` (routes/web.py). Every refusal is one ``{"error": ...}`` line with
the request id: 413 for size, pixel and page limits, 415 for formats, 422 for bad options, unknown
businesses, unreadable pages and rejected personal data, 429 when ``serve.max_concurrent_requests`` are
running, 503 while no model can read. A bug answers a JSON 500, counted in ``/metrics`` like every answer.
"""

from __future__ import annotations

import difflib
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

import ocrloop
from ocrloop.config import OcrloopConfig
from ocrloop.serve.middleware import BodyLimit, RequestAccounting
from ocrloop.serve.routes import health, metrics, models, ocr, web
from ocrloop.serve.schemas import OcrForm
from ocrloop.serve.state import RequestRefused, Service

# Multipart framing around the file: the body may pass the file limit by this much before it is cut off.
_MULTIPART_SLACK = 64 * 1024


def create_app(config: OcrloopConfig, engine: str = "model") -> FastAPI:
    """The service for the workspace described by ``config``; its lifespan loads the model and watches the registry."""
    service = Service(config, engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    # FastAPIOffline serves /docs with Swagger UI's files from its own package: the page works with no internet.
    app = FastAPIOffline(title="ocrloop", summary="OCR with the champion models of an ocrloop workspace.", lifespan=lifespan,
                         version=ocrloop.__version__)
    app.state.service = service
    for router in (ocr.router, models.router, health.router, metrics.router, web.router):
        app.include_router(router)
    app.add_exception_handler(RequestRefused, _refused)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    # The last added runs first: every answer, the body limit's 413 included, is counted.
    app.add_middleware(BodyLimit, max_bytes=config.serve.max_upload_bytes + _MULTIPART_SLACK,
                       message=f"upload is over the limit of {config.serve.max_upload_bytes} bytes (serve.max_upload_bytes)")
    app.add_middleware(RequestAccounting, metrics=service.metrics)
    return app


def _error(request: Request, status: int, message: str, **extra) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse({"error": message, "request_id": request_id, **extra}, status_code=status)


async def _refused(request: Request, error: RequestRefused) -> JSONResponse:
    return _error(request, error.status, str(error), **error.extra)


async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    # Starlette's own refusals (404, 405, a multipart body it cannot parse) in the same one-line shape.
    return _error(request, error.status_code, str(error.detail))


_OPTIONS = sorted(name for name in OcrForm.model_fields if name != "file")


async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    where, name = (first["loc"][0], ".".join(str(part) for part in first["loc"][1:])) if first["loc"] else ("request", "")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(name.replace("-", "_"), _OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; options are {', '.join(_OPTIONS)}"
        return _error(request, 422, f"unknown {where} option {name!r}{hint}")
    return _error(request, 422, f"{where} option {name!r}: {first['msg']}")


def serve(config: OcrloopConfig, host: str | None = None, port: int | None = None, engine: str = "model") -> None:
    """Run the service until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config, engine), host=host or config.serve.host,
                port=config.serve.port if port is None else port, log_level="info")
