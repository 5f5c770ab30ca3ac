"""One stage of several ``ocrloop bench pretrain`` runs side by side (issue 21): the stage's training loss and the
CER of its held-out lessons, against its steps, one line per run.

A stage that repeats its lessons too often shows it here: its loss keeps falling while its held-out CER does not.

    python bench/compare_stages.py --stage lines --out lines_repetition.png \\
        run17.json="60,000 lines" run17b.json="180,000 lines" run17a.json="medium, 60,000 lines"

Writes the PNG and, beside it, a JSON of what each line ends at (steps, distinct lessons, passes over them, final
loss, final held-out CER, samples per second).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.scoring import labelled_results, save_figure


def stage_summary(results: dict, stage: str) -> dict:
    """What one run's ``stage`` ended at, from its ``bench pretrain`` results."""
    found = [s for s in results["stages"] if s["stage"] == stage]
    if not found:
        raise SystemExit(f"error: this run has no {stage} stage (it has {', '.join(s['stage'] for s in results['stages'])})")
    entry = found[0]
    return {"steps": entry["steps"], "lessons": entry["lessons"],
            "passes": round(entry["steps"] * entry["batch_size"] / entry["lessons"], 2),
            "final_loss": entry["loss_by_step"][-1][1], "heldout_cer": entry["curve"][-1]["cer"],
            "samples_per_second": entry["steady_samples_per_second"], "parameters": results.get("parameters"),
            "loss_by_step": entry["loss_by_step"], "curve": [[p["step"], p["cer"]] for p in entry["curve"]]}


def compare(runs: dict[str, dict], stage: str, png: Path) -> dict:
    """Plot ``stage`` of each labelled run into ``png``; write and return the summary beside it (JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summaries = {label: stage_summary(results, stage) for label, results in runs.items()}
    fig, (loss_ax, cer_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for label, summary in summaries.items():
        line, = loss_ax.plot(*zip(*summary["loss_by_step"]), label=f"{label} ({summary['passes']:g} passes)")
        cer_ax.plot(*zip(*summary["curve"]), marker="o", color=line.get_color(),
                    label=f"{label}: {summary['heldout_cer']:.1%}")
    loss_ax.set_yscale("log")
    loss_ax.set_title(f"{stage}: training loss")
    cer_ax.set_title(f"{stage}: held-out {stage}, CER")
    cer_ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    cer_ax.set_ylim(0, None)
    for ax in (loss_ax, cer_ax):
        ax.set_xlabel("step of the stage")
        ax.legend(fontsize=7)
    save_figure(fig, png)
    summary = {"stage": stage, "runs": {label: {k: v for k, v in s.items() if k not in ("loss_by_step", "curve")}
                                         for label, s in summaries.items()}}
    atomic_write_json(png.with_suffix(".json"), summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="lines", choices=["glyphs", "lines", "blocks", "pages"])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (the JSON goes beside it)")
    parser.add_argument("runs", nargs="+", help="RESULTS.json=LABEL, one per run")
    args = parser.parse_args()
    for label, summary in compare(labelled_results(args.runs), args.stage, args.out)["runs"].items():
        print(f"{label}: {summary['steps']} steps, {summary['passes']:g} passes, loss {summary['final_loss']:.3f}, "
              f"held-out {args.stage} {summary['heldout_cer']:.1%}")


if __name__ == "__main__":
    main()
