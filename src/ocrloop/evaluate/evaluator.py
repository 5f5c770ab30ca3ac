"""Reading a dataset split with a model and scoring it: the ``eval`` recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ocrloop.data.dataset import Dataset
from ocrloop.data.records import PageExample
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs
from ocrloop.models.base import OCRModel


@dataclass
class ModelEvaluation:
    report: EvaluationReport
    examples: list[PageExample]
    predictions: list[str]


def read_pages(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], *, prompt: str, resolution: str,
               batch_size: int, max_new_tokens: int, progress: Callable[[int], None] | None = None) -> tuple[list[PageExample], list[str]]:
    """OCR every example in batches; pages that fail to load are skipped (and noted in ``dataset.problems``)."""
    read_examples: list[PageExample] = []
    texts: list[str] = []
    pending = list(dataset.iter_images(examples))
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        cache = bundle.feature_cache
        keys = [cache.key(example) for example, _ in chunk] if cache is not None and cache.resolution == resolution else None
        texts += bundle.generate([image for _, image in chunk], prompt=prompt, resolution=resolution, max_new_tokens=max_new_tokens,
                                 feature_keys=keys)
        read_examples += [example for example, _ in chunk]
        if progress:
            progress(len(read_examples))
    return read_examples, texts


def evaluate_model(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], *, prompt: str, resolution: str,
                   batch_size: int = 8, max_new_tokens: int = 1024, normalization: Normalization = Normalization(),
                   progress: Callable[[int], None] | None = None) -> ModelEvaluation:
    """Generate text for ``examples`` and score it overall, per category and per business."""
    read, predictions = read_pages(bundle, dataset, examples, prompt=prompt, resolution=resolution,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    pairs = [ScoredPair(e.text, p, e.category, e.business) for e, p in zip(read, predictions)]
    return ModelEvaluation(evaluate_pairs(pairs, normalization), read, predictions)
