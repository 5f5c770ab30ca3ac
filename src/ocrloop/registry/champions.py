"""Which model serves a business, and which businesses a workspace knows: read from the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass

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


def known_businesses(registry: Registry) -> set[str]:
    """Every business the registry has seen: in its models, its promotions, or its latest dataset snapshot."""
    known = {row["business"] for row in registry.models()} | {row["business"] for row in registry.promotions()}
    datasets = registry.datasets()
    if datasets:
        known |= {row["business"] for row in json.loads(datasets[-1]["mix_json"])}
    return {business for business in known if business and business != GENERAL}
