"""ASGI middleware of the service: request ids, counted answers (5xx included), and a bounded request body.

Plain ASGI rather than ``BaseHTTPMiddleware``: the body limit must see the upload as it streams in,
before anything buffers it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from ocrloop.serve.metrics import ServiceMetrics

log = logging.getLogger("ocrloop.serve")


async def send_json(send, status: int, payload: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestAccounting:
    """Gives each request an id (``X-Request-Id``), counts every answer by route and code, and turns an
    unhandled error into a counted JSON 500 that names the request id (the traceback goes to the log)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:  # noqa: BLE001 - a bug must still get an answer, a count and a log line
            log.exception("request %s failed", request_id)
            status["code"] = 500
            if not status["sent"]:
                await send_json(send, 500, {"error": f"internal error; the service log has the details (request id "
                                                     f"{request_id})", "request_id": request_id},
                                [(b"x-request-id", request_id.encode())])
        finally:
            # The route's template (set by the router) is a bounded label, never the raw path: the built-in
            # routes (/openapi.json, /docs, their static files) and 404s count as "other".
            path = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.requests.labels(path, str(status["code"])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Answers 413 as soon as a request body passes ``max_bytes``, declared or streamed (chunked), so an
    oversized upload is never held whole in memory or on disk."""

    def __init__(self, app, max_bytes: int, message: str):
        self.app = app
        self.max_bytes = max_bytes
        self.message = message

    async def _refuse(self, scope, send) -> None:
        await send_json(send, 413, {"error": self.message, "request_id": scope.get("state", {}).get("request_id")})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        # A body declared too large is refused at its first read, never received; the request is still
        # routed first, so its answer is counted under its route.
        state = {"received": 0, "over": False, "started": False,
                 "declared_over": declared.isdigit() and int(declared) > self.max_bytes}

        async def limited_receive():
            if state["declared_over"]:
                state["over"] = True
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            if state["over"]:
                return  # whatever the app answers to a cut-off body, the answer is 413
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(scope, send)
