"""``/metrics``: the service's counters and the registry's figures, for Prometheus."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from ocrloop.serve.state import ServiceDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(service: ServiceDep) -> Response:
    exposition = await asyncio.to_thread(service.metrics.exposition)
    return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")
