"""Scoring saved predictions (a JSONL file of page texts) against a dataset split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ocrloop.data.records import PageExample
from ocrloop.errors import OcrloopError
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs


@dataclass
class PredictionScore:
    report: EvaluationReport
    missing: list[str]  # example ids with no prediction (scored as empty output)


def read_predictions(path: Path) -> dict[tuple[str, int], str]:
    """Read ``{"image": source, "page": n, "text": ...}`` lines; key by (source, page)."""
    if not path.is_file():
        raise OcrloopError(f"{path}: predictions file not found")
    predictions: dict[tuple[str, int], str] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OcrloopError(f"{path}:{number}: not a JSON line ({error})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("text"), str):
            raise OcrloopError(f"{path}:{number}: expected an object with string 'image' and 'text'")
        page = entry.get("page", 0)
        if not isinstance(page, int) or page < 0:
            raise OcrloopError(f"{path}:{number}: 'page' must be a non-negative integer")
        predictions[(entry["image"], page)] = entry["text"]
    return predictions


def write_predictions(path: Path, examples: list[PageExample], texts: list[str]) -> None:
    """Write predictions in the format ``read_predictions`` reads (atomically)."""
    from ocrloop.atomic import atomic_write_text

    lines = [
        json.dumps({"image": e.source, "page": e.page, "category": e.category, "business": e.business, "text": t}, ensure_ascii=False)
        for e, t in zip(examples, texts, strict=True)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


def score_predictions(examples: list[PageExample], predictions: dict[tuple[str, int], str],
                      normalization: Normalization = Normalization()) -> PredictionScore:
    """Score ``predictions`` against ``examples``; a page without prediction counts as empty output."""
    missing = [f"{e.source}#{e.page}" for e in examples if (e.source, e.page) not in predictions]
    pairs = [
        ScoredPair(e.text, predictions.get((e.source, e.page), ""), e.category, e.business) for e in examples
    ]
    return PredictionScore(evaluate_pairs(pairs, normalization), missing)
