"""Which model serves a business, and which businesses a workspace knows: read from the registry."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ocrloop.errors import OcrloopError
from ocrloop.registry.store import GENERAL, Registry, business_key, business_label


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


def registered_businesses(registry: Registry) -> set[str]:
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
            champions.setdefault(name, []).append(business_label(key))
    return champions


def latest_test_cer(registry: Registry, name: str) -> float | None:
    """The test CER of ``name``'s latest evaluation on the test split, None if it was never tested."""
    tests = [row for row in registry.evaluations(name) if row["split"] == "test"]
    return tests[-1]["cer"] if tests else None


def promote(registry: Registry, name: str, business: str | None = None, *, force: bool = False) -> str:
    """Make ``name`` the champion of ``business`` (general when None) by hand; returns what was decided.

    A model whose latest test CER is worse than the champion's is refused unless ``force``."""
    if registry.model(name) is None:
        raise OcrloopError(f"no model named {name!r}; see `ocrloop models list`")
    key = business_key(business)
    current = registry.champion(key)
    new, old = latest_test_cer(registry, name), latest_test_cer(registry, current) if current else None
    if new is not None and old is not None and new > old and not force:
        raise OcrloopError(f"{name} reads the test split worse than the champion {current} (CER {new:.2%} vs {old:.2%}); "
                           "pass --force to promote it anyway")
    registry.record_promotion(name, "manual", "promoted by hand" + (" over a better champion (--force)" if force and
                              new is not None and old is not None and new > old else ""), business=key)
    return f"{name} is now the {business_label(key)} champion" + (f" (was {current})" if current else "")


def roll_back(registry: Registry, business: str | None, base_model: str) -> tuple[str, str]:
    """Make the most recent earlier champion of ``business`` (general when None) the champion again; with no
    earlier one, go back to the base model (a business then falls back to the general champion).

    Returns ``(restored, replaced)``; raises ``OcrloopError`` when there is no champion to roll back."""
    key = business_key(business)
    reigns = champion_stack(registry, key)
    current = reigns[-1] if reigns else None
    if current is None or current == base_model_name(base_model):
        raise OcrloopError(f"nothing to roll back for {business_label(key)}: it is served by the base model already")
    restored = reigns[-2] if len(reigns) > 1 else base_model_name(base_model)
    registry.record_promotion(restored, "rollback", f"rolled back from {current}", business=key)
    return restored, current


def champion_stack(registry: Registry, key: str) -> list[str]:
    """The champions of ``key`` still to roll back through, oldest first: a promotion pushes, a rollback pops,
    so rolling back twice goes two champions back, never to and fro."""
    stack: list[str] = []
    for row in registry.promotions(key):
        if row["decision"] == "rejected":
            continue
        if row["decision"] == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != row["model_name"]:
            stack.append(row["model_name"])
    return stack
