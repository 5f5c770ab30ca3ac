"""``/v1/models``: the versions in the registry, the champions, and what this process serves."""

from __future__ import annotations

from fastapi import APIRouter

from ocrloop.registry import Registry
from ocrloop.registry.store import business_label
from ocrloop.serve.schemas import ModelsAnswer, ModelVersion
from ocrloop.serve.state import ServiceDep
from ocrloop.workspace import known_businesses

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelsAnswer)
def models(service: ServiceDep) -> ModelsAnswer:
    with Registry(service.config.registry_location) as registry:
        rows = registry.models()
        promoted = sorted({p["business"] for p in registry.promotions()})
        champions = {business: registry.champion(business) for business in promoted}
        serving = set(champions.values())
        unjudged = [r["name"] for r in rows if r["name"] not in serving and r["family"] != "base"]
    return ModelsAnswer(
        base_model=service.config.base_model,
        challenger=unjudged[-1] if unjudged else None,
        champions={business_label(b): name for b, name in champions.items() if name},
        serving={business_label(b): name for b, name in service.champions.serving().items()},
        businesses=sorted(known_businesses(service.config)),  # the same set requests are checked against
        versions=[ModelVersion(name=r["name"], family=r["family"], business=r["business"], created_at=r["created_at"],
                               base_model=r["base_model"]) for r in rows],
    )
