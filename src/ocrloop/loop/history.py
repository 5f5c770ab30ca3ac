"""The loop's history as rows: one per loop run, read from the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ocrloop.registry import Registry


def loop_history(registry_location: str | Path) -> list[dict[str, Any]]:
    """Loop runs in order: triggers, document mix, challenger and champion scores (overall and per category),
    decision, duration, peak VRAM and cost."""
    rows = []
    with Registry(registry_location) as registry:
        datasets = {d["id"]: d for d in registry.datasets()}
        for run in registry.runs("loop"):
            config = json.loads(run["config_json"])
            metrics = json.loads(run["metrics_json"]) if run["metrics_json"] else {}
            dataset = datasets.get(run["dataset_id"])
            challenger_test = metrics.get("challenger_test") or {}
            champion_test = metrics.get("champion_test") or {}
            rows.append({
                "run_id": run["id"],
                "started_at": run["started_at"],
                "business": run["business"],
                "status": run["status"],
                "triggers": [t["name"] for t in config.get("triggers", [])],
                "documents": dataset["documents"] if dataset else None,
                "mix": json.loads(dataset["mix_json"]) if dataset else None,
                "challenger": metrics.get("challenger"),
                "champion": metrics.get("champion"),
                "challenger_test_cer": challenger_test.get("overall", {}).get("cer"),
                "champion_test_cer": champion_test.get("overall", {}).get("cer"),
                "challenger_cer_by_category": {k: v["cer"] for k, v in challenger_test.get("by_category", {}).items()},
                "champion_cer_by_category": {k: v["cer"] for k, v in champion_test.get("by_category", {}).items()},
                "decision": ("promoted" if metrics.get("promoted") else "rejected") if "promoted" in metrics else None,
                "reason": metrics.get("reason"),
                "wall_seconds": run["wall_seconds"],
                "peak_vram_gib": run["peak_vram_bytes"] / 2**30 if run["peak_vram_bytes"] else None,
                "cost_usd": run["cost_usd"],
                "error": run["error"],
            })
    return rows
