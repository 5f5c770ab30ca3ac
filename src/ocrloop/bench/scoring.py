"""What the learning benchmarks (``bench learn``, ``bench pretrain``) share: how a read is scored, Tesseract on
the same pages, and how a figure is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ocrloop.data.dataset import Dataset
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs

NORMALIZATIONS = {"plain": Normalization(), "strip_markdown": Normalization(strip_markdown=True)}


def _group_scores(group) -> dict[str, float]:
    return {"cer": group.cer, "mean_page_cer": group.macro_cer, "median_page_cer": group.median_cer,
            "normalized_edit_distance": group.normalized_edit_distance, "wer": group.wer}


def report_scores(report: EvaluationReport) -> dict[str, Any]:
    """Pooled CER, mean and median page CER, NED and WER, overall and per category."""
    return {**_group_scores(report.overall),
            "by_category": {k: _group_scores(v) for k, v in sorted(report.by_category.items())}}


def scored(examples: list, texts: list[str]) -> dict[str, Any]:
    """``report_scores`` of ``texts`` read from ``examples``, under each of ``NORMALIZATIONS``."""
    pairs = [ScoredPair(e.text, t, e.category, e.business) for e, t in zip(examples, texts)]
    return {"pages": len(pairs), **{name: report_scores(evaluate_pairs(pairs, normalization))
                                    for name, normalization in NORMALIZATIONS.items()}}


def score_tesseract(dataset: Dataset) -> dict[str, Any]:
    """Tesseract on every page of ``dataset`` (``scored``); ``{"error": ...}`` where it is not installed."""
    from ocrloop.errors import OcrloopError
    from ocrloop.evaluate.tesseract import read_with_tesseract, tesseract_name

    try:
        read, texts = read_with_tesseract(dataset, dataset.examples())
        engine = tesseract_name()
    except OcrloopError as error:
        return {"error": str(error)}
    return {"engine": engine, **scored(read, texts)}


def save_figure(fig, png: Path) -> Path:
    """Lay out, write and close a benchmark's figure; return where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
