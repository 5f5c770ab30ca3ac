"""``POST /v1/ocr``: read an image or PDF with the champion of a business.

The document comes as the multipart field ``file`` or as the raw request body; its format is told by
its bytes. Each page is checked before any is read, so a page that cannot be read is refused by
number and never reaches a batch that other requests share.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import PlainTextResponse

from ocrloop.agent import OCRAgent
from ocrloop.data.files import PDF_SUFFIXES, SUPPORTED_SUFFIXES, detect_format, inspect_file, load_page
from ocrloop.errors import OcrloopError
from ocrloop.models.reading import ReadingSettings
from ocrloop.pii import PiiRejected
from ocrloop.registry.store import GENERAL_NAME, business_label
from ocrloop.serve.schemas import ErrorAnswer, OcrAnswer, OcrForm, OcrOptions, PageAnswer
from ocrloop.serve.state import RequestRefused, Service, ServiceDep

router = APIRouter(tags=["ocr"])

_SUFFIX_BY_TYPE = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/tiff": ".tiff",
                   "image/bmp": ".bmp", "application/pdf": ".pdf"}
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_REFUSALS = {code: {"model": ErrorAnswer} for code in (413, 415, 422, 429, 503)}


@router.post("/v1/ocr", response_model=OcrAnswer, responses={
    **_REFUSALS, 200: {"content": {"text/markdown": {"schema": {"type": "string"}}},
                       "description": "The answer (JSON), or the text as markdown with format=md."}})
async def ocr(request: Request, service: ServiceDep, query: Annotated[OcrOptions, Query()],
              form: Annotated[OcrForm, Form(media_type="multipart/form-data")]):
    """Read every page of the document; answer JSON (or markdown with ``format=md``)."""
    with service.admitted():
        started = time.perf_counter()
        options = query.model_copy(update=form.model_dump(exclude={"file"}, exclude_none=True, exclude_unset=True))
        if options.business == GENERAL_NAME:  # the general scope by name: the same as naming none
            options = options.model_copy(update={"business": None})
        declared, body = await _upload(request, form, service.config.serve.max_upload_bytes)
        suffix = _document_format(body, declared)
        service.check_business(options.business)
        with tempfile.TemporaryDirectory(prefix="ocrloop-upload-") as scratch:
            path = Path(scratch) / f"upload{suffix}"
            await asyncio.to_thread(path.write_bytes, body)
            agent, reading, pages = await _read_document(service, path, suffix, options)
        answer = _answer(service, agent, reading, request, options, pages, time.perf_counter() - started)
    if options.format == "md":
        return PlainTextResponse(answer.text + "\n", media_type="text/markdown; charset=utf-8", headers={
            "X-Ocrloop-Model": answer.model, "X-Ocrloop-Pages": str(len(answer.pages)), "X-Ocrloop-Seconds": f"{answer.seconds:.3f}"})
    return answer


async def _upload(request: Request, form: OcrForm, limit: int) -> tuple[str, bytes]:
    """The declared format (from the file name or content type) and the bytes of the document."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if form.file is not None:
        declared = Path(form.file.filename or "").suffix.lower() or _SUFFIX_BY_TYPE.get(form.file.content_type or "", "")
        body = await form.file.read(limit + 1)
    elif content_type in _FORM_TYPES:
        raise RequestRefused(422, "no file: send the document as the multipart field `file`")
    else:
        declared = _SUFFIX_BY_TYPE.get(content_type, content_type)
        body = await request.body()
    if len(body) > limit:
        raise RequestRefused(413, f"upload is over the limit of {limit} bytes (serve.max_upload_bytes)")
    if not body:
        raise RequestRefused(422, "the document is empty (0 bytes)")
    return declared, body


def _document_format(body: bytes, declared: str) -> str:
    detected = detect_format(body[:1024])
    if detected:
        return detected
    supported = ", ".join(sorted(SUPPORTED_SUFFIXES))
    if declared in SUPPORTED_SUFFIXES:
        raise RequestRefused(422, f"unreadable: the bytes are not a {declared.lstrip('.')} file (nor any of {supported})")
    raise RequestRefused(415, f"unsupported format {declared or '(unknown)'}; send one of {supported}")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


async def _read_document(service: Service, path: Path, suffix: str,
                         options: OcrOptions) -> tuple[OCRAgent, ReadingSettings, list[tuple]]:
    """The agent that read the document, the settings it read with, and ``((width, height), text, seconds)`` per
    page, in order."""
    settings = service.config.serve
    info, reason = await asyncio.to_thread(inspect_file, path, service.page_limits)
    if reason:
        raise RequestRefused(413 if "over the limit" in reason else 422,
                             f"{'document' if suffix in PDF_SUFFIXES else 'image'}: {reason}")
    if info.pages > settings.max_pages:
        raise RequestRefused(413, f"document has {info.pages} pages, over the limit of {settings.max_pages} (serve.max_pages)")
    agent = await asyncio.to_thread(service.agent, options.business, options.model)
    reading, _ = agent.settings(prompt=options.prompt, resolution=options.mode)  # unset: the model's own settings
    if agent.resolutions is not None and reading.resolution not in agent.resolutions:
        raise RequestRefused(422, f"mode {reading.resolution!r} is not available for {agent.model_name}; "
                                  f"use one of {', '.join(agent.resolutions)}")
    futures, sizes, submitted = [], [], []
    for page in range(info.pages):
        try:
            image = await asyncio.to_thread(load_page, path, page, service.page_limits)
        except OcrloopError as error:
            raise RequestRefused(422, f"page {page + 1}: {error}") from None
        sizes.append(image.size)
        submitted.append(time.perf_counter())
        try:  # here, not on the GPU's thread: it reads the pages before these meanwhile
            prepared = await asyncio.to_thread(agent.prepare, image, prompt=reading.prompt, resolution=reading.resolution)
        except (OcrloopError, ValueError) as error:  # the model cannot take this page (its processor refuses the shape)
            raise RequestRefused(422, f"page {page + 1} could not be read: {_first_line(error)}") from None
        futures.append(asyncio.wrap_future(service.batcher.submit(agent, prepared, reading.prompt, reading.resolution)))
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    done = time.perf_counter()
    for page, outcome in enumerate(outcomes):
        # A page the model cannot take (its processor refuses the shape, ...) is the request's problem;
        # anything else is the service's, and surfaces as a counted 500.
        if isinstance(outcome, (OcrloopError, ValueError)):
            raise RequestRefused(422, f"page {page + 1} could not be read: {_first_line(outcome)}")
        if isinstance(outcome, BaseException):
            raise outcome
    for started in submitted:
        service.metrics.page_latency.observe(done - started)
    return agent, reading, [(size, text, done - started) for size, text, started in zip(sizes, outcomes, submitted)]


def _answer(service: Service, agent: OCRAgent, reading: ReadingSettings, request: Request, options: OcrOptions,
            pages: list[tuple], seconds: float) -> OcrAnswer:
    policy = options.pii_policy or service.config.serve.pii_policy
    answers, pii = [], {}
    for index, ((width, height), text, page_seconds) in enumerate(pages):
        try:
            shown, found = agent.protect(text, policy)
        except PiiRejected as rejected:
            for kind, count in rejected.counts.items():
                service.metrics.pii.labels(kind).inc(count)
            raise RequestRefused(422, f"page {index + 1}: {rejected} (pii_policy=reject)", pii=rejected.counts) from None
        for kind, count in found.items():
            service.metrics.pii.labels(kind).inc(count)
            pii[kind] = pii.get(kind, 0) + count
        answers.append(PageAnswer(page=index + 1, width=width, height=height, text=shown, seconds=round(page_seconds, 4)))
    service.metrics.pages.labels(business_label(options.business)).inc(len(answers))
    return OcrAnswer(request_id=request.state.request_id, model=agent.model_name, business=options.business,
                     prompt=reading.prompt, mode=reading.resolution, pages=answers,
                     text="\n\n".join(page.text for page in answers), pii=pii, pii_policy=policy, seconds=round(seconds, 4))
