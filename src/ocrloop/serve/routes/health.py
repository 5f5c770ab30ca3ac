"""``/healthz`` (the process answers) and ``/readyz`` (a model is loaded and has read a page), for orchestrators."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter

from ocrloop.errors import RegistryError
from ocrloop.registry import Registry
from ocrloop.serve.schemas import ErrorAnswer, HealthAnswer, ReadyAnswer
from ocrloop.serve.state import RequestRefused, ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthAnswer)
async def healthz(service: ServiceDep) -> HealthAnswer:
    """Liveness: the process serves requests. Says whether the registry opens; never loads a model."""
    try:
        with Registry(service.config.registry_location) as registry:  # a cheap read, no integrity scan: probes poll often
            registry.champion()
        registry_ok = True
    except (RegistryError, sqlite3.DatabaseError):
        registry_ok = False
    return HealthAnswer(status="ok", registry=registry_ok, serving=service.champions.serving(),
                        requests_in_progress=service.in_progress)


@router.get("/readyz", response_model=ReadyAnswer, responses={503: {"model": ErrorAnswer}})
async def readyz(service: ServiceDep) -> ReadyAnswer:
    """Readiness: 200 once the general model is loaded and has read a page; 503 with the reason before that."""
    readiness = service.readiness
    if readiness.state == "ready":
        return ReadyAnswer(status="ready", model=readiness.model,
                           seconds_to_read_a_page=round(readiness.seconds_to_read_a_page, 4))
    if readiness.state == "loading":
        raise RequestRefused(503, "loading the model; not ready yet")
    raise RequestRefused(503, f"no model to read with: {readiness.reason}")
