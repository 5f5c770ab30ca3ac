"""Reading a dataset split with a model and scoring it: the ``eval`` recipe."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ocrloop.config import OcrloopConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.records import PageExample
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs
from ocrloop.models.base import OCRModel
from ocrloop.models.feature_cache import FeatureCache
from ocrloop.models.reading import ReadingSettings


@dataclass
class ModelEvaluation:
    report: EvaluationReport
    examples: list[PageExample]
    predictions: list[str]


def read_pages(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], reading: ReadingSettings, *,
               batch_size: int, progress: Callable[[int], None] | None = None,
               cache: FeatureCache | None = None) -> tuple[list[PageExample], list[str]]:
    """OCR every example in batches; pages that fail to load are skipped (and noted in ``dataset.problems``).
    Pages whose image features ``cache`` holds (at the reading's resolution) skip the vision tower."""
    read_examples: list[PageExample] = []
    texts: list[str] = []
    pending = list(dataset.iter_images(examples))
    if cache is not None and cache.resolution != reading.resolution:
        cache.restore_vision()  # its features are for another resolution; generation needs the whole model here
        cache = None
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        with cache.reading([cache.key(example) for example, _ in chunk]) if cache is not None else nullcontext():
            texts += bundle.read([image for _, image in chunk], reading)
        read_examples += [example for example, _ in chunk]
        if progress:
            progress(len(read_examples))
    return read_examples, texts


def evaluate_model(bundle: OCRModel, dataset: Dataset, examples: list[PageExample], reading: ReadingSettings, *,
                   batch_size: int = 8, normalization: Normalization = Normalization(),
                   progress: Callable[[int], None] | None = None, cache: FeatureCache | None = None) -> ModelEvaluation:
    """Generate text for ``examples`` with ``reading``'s settings and score it overall, per category and per business."""
    read, predictions = read_pages(bundle, dataset, examples, reading, batch_size=batch_size, progress=progress,
                                   cache=cache)
    pairs = [ScoredPair(e.text, p, e.category, e.business) for e, p in zip(read, predictions)]
    return ModelEvaluation(evaluate_pairs(pairs, normalization), read, predictions)


def read_source(source: str, config: OcrloopConfig, dataset: Dataset, examples: list[PageExample], explicit: dict, *,
                progress: Callable[[int], None] | None = None, on_note: Callable[[str], None] | None = None) -> tuple[list[str], int]:
    """Each example's text read by ``source`` (a model folder, preset or hub id, or ``tesseract``); "" for a page
    that did not load. A model reads with its own saved settings unless ``explicit`` names others (each
    difference goes to ``on_note``). Also returns how many pages reused image features cached by training."""
    from ocrloop.evaluate.tesseract import ENGINE, read_with_tesseract

    if source == ENGINE:
        read, texts = read_with_tesseract(dataset, examples, progress=progress)
        hits = 0
    else:
        from ocrloop.models import load_model
        from ocrloop.models.feature_cache import open_saved_cache
        from ocrloop.models.reading import resolve_reading

        training = config.training
        bundle = load_model(source, backend=training.backend)
        reading, notes = resolve_reading(bundle.reading, ReadingSettings.from_training(training), model_name=source,
                                         **explicit)
        for note in notes:
            if on_note:
                on_note(note)
        cache = open_saved_cache(bundle, Path(source), reading.resolution, pdf_dpi=config.data.pdf_dpi)
        with cache if cache is not None else nullcontext():
            read, texts = read_pages(bundle, dataset, examples, reading, batch_size=training.read_batch_size, progress=progress,
                                     cache=cache)
        hits = cache.stats.hits if cache is not None else 0
    by_id = {(e.source, e.page): text for e, text in zip(read, texts)}
    return [by_id.get((e.source, e.page), "") for e in examples], hits
