"""Whole ``ocrloop bench pretrain`` runs side by side (issue 21): each stage's steps, what the lines and the pages
stage read, when the pages stage began, and the test pages, the blind control and the unseen layout; plotted as the
test pages' CER against the pages steps that fit, each with its 95 % interval.

Runs 27, 28 and 31, one command three times, read the test pages at 4.44, 3.39 and 3.11 % with 625, 670 and 818
pages steps, while their lines read at 23.4, 16.7 and 22.6 %: this is the figure that shows such a pattern, or its
absence, across runs.

    python bench/compare_runs.py --out pages_steps.png run27.json=27 run28.json=28 run31.json=31

Prints one line per run and writes the PNG and, beside it, a JSON of every run's summary. The first pages (the
--heldout that runs with fewer test pages read) are scored apart, so runs of 64 and of 256 test pages compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.scoring import labelled_results, save_figure


def _scored(scores: dict | None) -> dict | None:
    """Pooled CER and its interval, markup ignored, of a read set; None where the run has none."""
    if not scores or "strip_markdown" not in scores:
        return None
    ignored = scores["strip_markdown"]
    return {"pages": scores.get("pages"), "cer": ignored["cer"], "interval": ignored.get("cer_interval_95")}


def run_summary(results: dict) -> dict:
    """What one ``bench pretrain`` run trained and read."""
    stages = {s["stage"]: s for s in results["stages"]}
    if "pages" not in stages:
        raise SystemExit("error: a run without a pages stage has no page reader to compare "
                         f"(it has {', '.join(stages)})")
    pages = stages["pages"]
    test = results.get("heldout_pages")
    return {"steps": {name: stage["steps"] for name, stage in stages.items()},
            "validation_cer": {name: stage["curve"][-1]["cer"] for name, stage in stages.items() if stage["curve"]},
            "pages_started_seconds": pages.get("stage_started_seconds"),
            "test_pages": _scored(test), "first_pages": _scored((test or {}).get("first_pages") or test),
            "blind_control": _scored(results.get("blind_control")),
            "unseen_layout_photos": _scored(results.get("heldout_photos")),
            "unseen_layout_clean": _scored(results.get("heldout_unseen_layout"))}


def _error_bar(scores: dict) -> tuple[float, float]:
    """How far below and above the pooled CER its interval reaches (none drawn where a run kept no interval)."""
    low, high = scores["interval"] or (scores["cer"], scores["cer"])
    return max(0.0, scores["cer"] - low), max(0.0, high - scores["cer"])


def _percent(scores: dict | None) -> str:
    return "-" if scores is None else f"{scores['cer']:.2%}"


def describe(label: str, summary: dict) -> str:
    steps = ", ".join(f"{name} {count}" for name, count in summary["steps"].items())
    lines = summary["validation_cer"].get("lines")
    started = summary["pages_started_seconds"]
    return (f"{label}: steps {steps}; lines {'-' if lines is None else f'{lines:.1%}'}; pages from "
            f"{'-' if started is None else f'{started:.0f} s'}; test pages {_percent(summary['test_pages'])} "
            f"({summary['test_pages']['pages'] if summary['test_pages'] else 0}), the first "
            f"{summary['first_pages']['pages'] if summary['first_pages'] else 0} {_percent(summary['first_pages'])}; "
            f"blind {_percent(summary['blind_control'])}; unseen layout {_percent(summary['unseen_layout_photos'])} "
            f"as photos, {_percent(summary['unseen_layout_clean'])} clean")


def compare(runs: dict[str, dict], png: Path) -> dict:
    """Summarize each labelled run, plot its test pages' CER against its pages steps into ``png``, and write the
    summaries beside it (JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {label: run_summary(results) for label, results in runs.items()}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = (("first_pages", "the first test pages", "o", -4), ("test_pages", "every test page", "s", 4))
    for key, name, marker, nudge in shown:
        points = [(label, s["steps"]["pages"], s[key]) for label, s in summaries.items() if s[key]]
        if key == "test_pages":  # where every test page is the first ones, the point is already drawn
            points = [p for p in points if p[2]["pages"] != summaries[p[0]]["first_pages"]["pages"]]
        if not points:
            continue
        x = [steps + nudge for _, steps, _ in points]
        y = [scores["cer"] for _, _, scores in points]
        errors = list(zip(*(_error_bar(scores) for *_, scores in points)))
        ax.errorbar(x, y, yerr=errors, fmt=marker, capsize=3,
                    label=f"{name} ({', '.join(sorted({str(s['pages']) for *_, s in points}))} pages)")
        for (label, _, _), xi, yi in zip(points, x, y):
            ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xlabel("pages steps that fit")
    ax.set_ylabel("test pages CER, markup ignored (95 % interval)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    ax.set_title("bench pretrain: the page reader against its pages steps")
    save_figure(fig, png)
    summary = {"runs": summaries}
    atomic_write_json(png.with_suffix(".json"), summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (the JSON goes beside it)")
    parser.add_argument("runs", nargs="+", help="RESULTS.json=LABEL, one per run")
    args = parser.parse_args()
    for label, summary in compare(labelled_results(args.runs), args.out)["runs"].items():
        print(describe(label, summary))


if __name__ == "__main__":
    main()
