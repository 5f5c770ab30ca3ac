"""What the learning benchmarks (``bench learn``, ``bench pretrain``) share: how a read is scored, Tesseract on
the same pages, and how a figure is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ocrloop.atomic import atomic_write_json
from ocrloop.data.dataset import Dataset
from ocrloop.errors import OcrloopError
from ocrloop.evaluate.metrics import EvaluationReport, Normalization, ScoredPair, evaluate_pairs

NORMALIZATIONS = {"plain": Normalization(), "strip_markdown": Normalization(strip_markdown=True)}


def _group_scores(group) -> dict[str, Any]:
    return {"cer": group.cer, "cer_interval_95": list(group.cer_interval()), "mean_page_cer": group.macro_cer,
            "median_page_cer": group.median_cer, "normalized_edit_distance": group.normalized_edit_distance,
            "wer": group.wer, "page_cers": group.page_cers}


def report_scores(report: EvaluationReport) -> dict[str, Any]:
    """Pooled CER, mean and median page CER, NED and WER, overall and per category."""
    return {**_group_scores(report.overall),
            "by_category": {k: _group_scores(v) for k, v in sorted(report.by_category.items())}}


def scored(examples: list, texts: list[str]) -> dict[str, Any]:
    """``report_scores`` of ``texts`` read from ``examples``, under each of ``NORMALIZATIONS``."""
    pairs = [ScoredPair(e.text, t, e.category, e.business) for e, t in zip(examples, texts)]
    return {"pages": len(pairs), **{name: report_scores(evaluate_pairs(pairs, normalization))
                                    for name, normalization in NORMALIZATIONS.items()}}


def score_tesseract(dataset: Dataset, split: str | None = None) -> dict[str, Any]:
    """Tesseract on every page of ``dataset`` (of ``split``, if given; ``scored``); ``{"error": ...}`` where it is
    not installed."""
    from ocrloop.evaluate.tesseract import read_with_tesseract, tesseract_name

    try:
        read, texts = read_with_tesseract(dataset, dataset.examples(split))
        engine = tesseract_name()
    except OcrloopError as error:
        return {"error": str(error)}
    return {"engine": engine, **scored(read, texts)}


def add_tesseract(out: Path, command: str, heldout: Callable[[dict[str, Any]], Dataset],
                  plot: Callable[[dict[str, Any], Path], Path], read: str | None = None,
                  also: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Score Tesseract into ``out``, a ``command`` result made where Tesseract was missing (a GPU machine), and redraw
    its figure with ``plot``. ``heldout`` renders the result's held-out pages again from its workload (the same pages,
    fonts on the machine permitting); where ``read`` names the reading whose examples the result kept, the pages must
    hold the same texts. ``also`` scores Tesseract on more of the result's pages, into the results, before they are
    written. Every refusal is one line (``OcrloopError``), and leaves ``out`` as it was."""
    try:
        results = json.loads(out.read_text())
    except OSError:
        raise OcrloopError(f"{out}: no {command} result to add Tesseract to") from None
    except ValueError as error:
        raise OcrloopError(f"{out} is not JSON ({error})") from None
    if not isinstance(results, dict) or "workload" not in results or (read is not None and read not in results):
        raise OcrloopError(f"{out} is not a finished {command} result: a run that did not finish has no reading of "
                           "its held-out pages to set Tesseract beside")
    pages = heldout(results["workload"])
    if read is not None:
        references = [e["reference"] for e in results[read]["examples"]]
        if [e.text for e in pages.examples()[: len(references)]] != references:
            raise OcrloopError(f"the held-out pages rendered here differ from {out}'s (other fonts?); Tesseract would "
                               "read other pages")
    results["tesseract"] = score_tesseract(pages)
    if also is not None:
        also(results)
    atomic_write_json(out, results)
    plot(results, out.with_suffix(".png"))
    return results


def save_figure(fig, png: Path) -> Path:
    """Lay out, write and close a benchmark's figure; return where it went."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
