"""How a model reads pages: the settings that travel with a saved model.

A model trained at ``--resolution tiny --prompt ocr`` reads well only at those settings. They are
saved in its ``ocrloop_model.json`` and used by every reader (``eval``, ``ocr``, ``serve``, the agent,
the loop) unless the caller asks for others explicitly; an explicit value that differs from the
model's own is said in one line, never silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ReadingSettings:
    """What a page is read with: resolution mode, prompt template and generation limit."""

    resolution: str = "base"
    prompt: str = "markdown"
    max_new_tokens: int = 1024

    @classmethod
    def from_training(cls, training: Any) -> "ReadingSettings":
        """The settings a ``TrainingConfig`` trains (and validates) with."""
        return cls(training.resolution, training.prompt, training.max_new_tokens)

    @classmethod
    def from_json(cls, values: Any) -> "ReadingSettings | None":
        """Settings saved by ``to_json``; None for cards written before settings were saved, or damaged ones."""
        if not isinstance(values, dict):
            return None
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in values.items() if k in names}
        if set(known) != names or not isinstance(known["max_new_tokens"], int):
            return None
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def resolve_reading(own: ReadingSettings | None, fallback: ReadingSettings, *, model_name: str = "the model",
                    **explicit: Any) -> tuple[ReadingSettings, list[str]]:
    """The settings to read with, and one note per explicit value that differs from the model's own.

    Precedence: an explicit value (a flag, a request option), then the model's own saved settings,
    then ``fallback`` (the workspace's ``training:`` settings, for base models that carry none).
    """
    unknown = set(explicit) - {f.name for f in fields(ReadingSettings)}
    if unknown:
        raise TypeError(f"unknown reading setting(s) {sorted(unknown)}")
    chosen = own or fallback
    notes = []
    values = {}
    for name in (f.name for f in fields(ReadingSettings)):
        value = explicit.get(name)
        if value is None:
            values[name] = getattr(chosen, name)
            continue
        values[name] = value
        if own is not None and getattr(own, name) != value:
            notes.append(f"reading with {name} {value!r}, but {model_name} was trained with {getattr(own, name)!r}")
    return ReadingSettings(**values), notes
