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


def kept_reads(results: dict[str, Any]) -> list[dict[str, str]]:
    """Every test page's reference and read that a ``bench pretrain`` result kept (``heldout_pages.reads``, from the
    nineteenth session on), in page order."""
    reads = results.get("heldout_pages", {}).get("reads")
    if not reads:
        raise OcrloopError("this result kept no reads (heldout_pages.reads): it was made before the nineteenth session; "
                           "only its three worst pages were kept")
    return reads


# What only one layout of ``data.synth.DOCUMENT_TEMPLATES`` writes, by (category, layout): reads and page sets keep
# neither.
LAYOUT_MARKERS = {("receipt", 0): "Receipt #R-", ("receipt", 1): "Order no. ", ("receipt", 2): "**Receipt no.**",
                  ("invoice", 0): "# INVOICE #", ("invoice", 1): "## Invoice INV-", ("invoice", 2): "# TAX INVOICE"}


def page_layout(reference: str) -> tuple[str, int] | None:
    """The category and layout (index into ``DOCUMENT_TEMPLATES``) of a page's text; None where no layout, or more
    than one, claims it (a lesson laid out anew or relabelled)."""
    claims = [layout for layout, marker in LAYOUT_MARKERS.items() if marker in reference]
    return claims[0] if len(claims) == 1 else None


def page_category(reference: str) -> str:
    """receipt or invoice, from a page's text in any layout (reads keep no category); other where it says neither."""
    layout = page_layout(reference)
    if layout:
        return layout[0]
    return "receipt" if "Receipt" in reference else "invoice" if "INVOICE" in reference.upper() else "other"


def kept_reads_command(description: str, analyse: Callable[[dict[str, Any]], dict[str, Any]],
                       show: Callable[[str, dict[str, Any]], None], written: str) -> None:
    """The command line of a script that analyses the kept reads of ``bench pretrain`` results: each RESULTS.json
    given is ``analyse``d and ``show``n (its file name, what ``analyse`` returned); with ``--out``, everything is also
    written there (``written``: what, for the help). A missing file or one without reads ends it in one line."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("results", nargs="+", type=Path, help="bench pretrain results (JSON)")
    parser.add_argument("--out", type=Path, help=f"also write the {written} here (JSON)")
    args = parser.parse_args()
    found = {}
    for path in args.results:
        if not path.is_file():
            raise SystemExit(f"error: {path}: no such results file")
        try:
            found[path.name] = analyse(json.loads(path.read_text()))
        except OcrloopError as error:
            raise SystemExit(f"error: {path}: {error}")
        show(path.name, found[path.name])
    if args.out:
        atomic_write_json(args.out, found)


def labelled_results(runs: list[str]) -> dict[str, dict[str, Any]]:
    """``RESULTS.json=LABEL`` arguments (the label defaults to the file's stem) as label -> results; a missing file
    ends the command in one line."""
    found = {}
    for run in runs:
        path, _, label = run.partition("=")
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: no such results file")
        found[label or Path(path).stem] = json.loads(Path(path).read_text())
    return found


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
