"""Which model serves a business, and which businesses a workspace knows: read from the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ocrloop.errors import OcrloopError
from ocrloop.registry.store import GENERAL, Registry


@dataclass
class Champion:
    """What currently serves a business: its champion, else the general one, else the base model."""

    name: str
    path: str
    key: str  # the promotions key it came from, or "base"


def base_model_name(base_model: str) -> str:
    return f"base:{base_model}"


def serving_model(registry: Registry, base_model: str, business: str | None) -> Champion:
    """The model that answers OCR for ``business``: its champion, else the general champion, else the base."""
    for key in ([business] if business and business != GENERAL else []) + [GENERAL]:
        name = registry.champion(key)
        if name:
            row = registry.model(name)
            if row:
                return Champion(name, row["path"], key)
    return Champion(base_model_name(base_model), base_model, "base")


def registered_name(registry: Registry, model: str) -> str:
    """The registry's name of the model at folder ``model``; ``model`` itself when it is not registered."""
    resolved = str(Path(model).resolve()) if Path(model).exists() else model
    return next((row["name"] for row in registry.models() if row["path"] == resolved), model)


def known_businesses(registry: Registry) -> set[str]:
    """Every business the registry has seen: in its models, its promotions, or its latest dataset snapshot."""
    known = {row["business"] for row in registry.models()} | {row["business"] for row in registry.promotions()}
    datasets = registry.datasets()
    if datasets:
        known |= {row["business"] for row in json.loads(datasets[-1]["mix_json"])}
    return {business for business in known if business and business != GENERAL}


def champions_by_model(registry: Registry) -> dict[str, list[str]]:
    """Model name -> the businesses it is champion of (``general`` for the general champion)."""
    champions: dict[str, list[str]] = {}
    for key in sorted({p["business"] for p in registry.promotions()}):
        name = registry.champion(key)
        if name:
            champions.setdefault(name, []).append("general" if key == GENERAL else key)
    return champions


def roll_back(registry: Registry, business: str | None = None) -> tuple[str, str]:
    """Make the most recent earlier champion of ``business`` (general when None) the champion again.

    Returns ``(restored, replaced)``; raises ``OcrloopError`` when there is no earlier champion."""
    key = business or GENERAL
    current = registry.champion(key)
    earlier = [p["model_name"] for p in registry.promotions(key) if p["decision"] != "rejected" and p["model_name"] != current]
    if current is None or not earlier:
        raise OcrloopError(f"nothing to roll back to for {business or 'all businesses'}")
    registry.record_promotion(earlier[-1], "rollback", f"rolled back from {current}", business=key)
    return earlier[-1], current
