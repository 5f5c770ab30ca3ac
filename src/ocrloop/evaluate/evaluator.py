"""Reading a dataset split with a model and scoring it: the ``eval`` recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ocrloop.data.dataset import Dataset
from ocrloop.data.records import PageExample
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs
from ocrloop.models.base import OCRModel
from ocrloop.models.reading import ReadingSettings


@dataclass
class ModelEvaluation:
    report: EvaluationReport
    examples: list[PageExample]
    predictions: list[str]


def read_pages(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], reading: ReadingSettings, *,
               batch_size: int, progress: Callable[[int], None] | None = None) -> tuple[list[PageExample], list[str]]:
    """OCR every example in batches; pages that fail to load are skipped (and noted in ``dataset.problems``)."""
    read_examples: list[PageExample] = []
    texts: list[str] = []
    pending = list(dataset.iter_images(examples))
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        cache = bundle.feature_cache
        keys = [cache.key(example) for example, _ in chunk] if cache is not None and cache.resolution == reading.resolution else None
        texts += bundle.read([image for _, image in chunk], reading, feature_keys=keys)
        read_examples += [example for example, _ in chunk]
        if progress:
            progress(len(read_examples))
    return read_examples, texts


def evaluate_model(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], reading: ReadingSettings, *,
                   batch_size: int = 8, normalization: Normalization = Normalization(),
                   progress: Callable[[int], None] | None = None) -> ModelEvaluation:
    """Generate text for ``examples`` with ``reading``'s settings and score it overall, per category and per business."""
    read, predictions = read_pages(bundle, dataset, examples, reading, batch_size=batch_size, progress=progress)
    pairs = [ScoredPair(e.text, p, e.category, e.business) for e, p in zip(read, predictions)]
    return ModelEvaluation(evaluate_pairs(pairs, normalization), read, predictions)
