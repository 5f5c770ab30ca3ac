"""Why the loop would retrain now: each trigger is named and explained, or absent."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from ocrloop.config import LoopConfig
from ocrloop.data.dataset import Manifest


@dataclass(frozen=True)
class Trigger:
    name: str  # "first-run", "new-documents", "new-category", "new-business", "drift", "schedule", "forced"
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


def data_triggers(current: Manifest, previous: Manifest | None, loop: LoopConfig) -> list[Trigger]:
    """Triggers that depend only on the data: first run, new documents, new categories or business types."""
    if previous is None:
        return [Trigger("first-run", f"no earlier loop run; {len(current.entries)} documents to learn from")]
    triggers = []
    new = current.new_since(previous)
    if len(new) >= loop.new_documents_threshold:
        triggers.append(Trigger("new-documents", f"{len(new)} new documents since the last run (threshold {loop.new_documents_threshold})"))
    if loop.retrain_on_new_category:
        for axis, label in (("category", "new-category"), ("business", "new-business")):
            before = {getattr(e, axis) for e in previous.entries}
            added = sorted({getattr(e, axis) for e in current.entries} - before)
            if added:
                triggers.append(Trigger(label, f"new {axis} in the data: {', '.join(added)}"))
    return triggers


def schedule_trigger(schedule: str, last_run_started: str | None, now: dt.datetime) -> Trigger | None:
    """``monthly``: the last run was in an earlier calendar month; ``weekly``: 7 days or more ago."""
    if schedule == "none" or last_run_started is None:
        return None
    last = dt.datetime.fromisoformat(last_run_started)
    if schedule == "monthly" and (now.year, now.month) > (last.year, last.month):
        return Trigger("schedule", f"monthly retrain: the last run was on {last.date().isoformat()}")
    if schedule == "weekly" and now - last >= dt.timedelta(days=7):
        return Trigger("schedule", f"weekly retrain: the last run was on {last.date().isoformat()}")
    return None


def drift_trigger(current_cer: float | None, promoted_cer: float | None, loop: LoopConfig) -> Trigger | None:
    """The champion reads validation pages worse than allowed, or worse than when it was promoted."""
    if current_cer is None:
        return None
    if loop.max_validation_cer is not None and current_cer > loop.max_validation_cer:
        return Trigger("drift", f"champion validation CER {current_cer:.2%} is above the limit {loop.max_validation_cer:.2%}")
    if promoted_cer is not None and current_cer > promoted_cer + loop.drift_tolerance:
        return Trigger("drift", f"champion validation CER {current_cer:.2%} is worse than at promotion ({promoted_cer:.2%})")
    return None


def triggers_json(triggers: list[Trigger]) -> str:
    return json.dumps([t.to_json() for t in triggers])
