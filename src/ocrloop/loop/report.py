"""``ocrloop report``: the loop's history as one self-contained HTML page.

Plots (matplotlib, embedded as PNG data) of the document mix over time, loop runs per week, test CER
and WER per model version and document type, training loss and validation CER of recent runs,
fine-tuning duration, peak VRAM and cost per run, then the before/after table of the last loop decision
and the list of loop runs. A chart with nothing to show says so instead of drawing flat lines. Everything is
read from the registry; the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from ocrloop.atomic import atomic_write_text  # noqa: E402
from ocrloop.loop.history import loop_history  # noqa: E402
from ocrloop.registry import Registry  # noqa: E402
from ocrloop.registry.store import business_label, shown_location  # noqa: E402

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.better{color:#16794a}.worse{color:#b3261e}.empty{color:#888;font-style:italic}"""


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def _figure_html(fig, title: str) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'


def _empty(title: str, why: str) -> str:
    return f'<h2>{html.escape(title)}</h2><p class="empty">{html.escape(why)}</p>'


def _document_mix(datasets: list[dict]) -> str:
    title = "Document mix over time"
    if not datasets:
        return _empty(title, "no dataset snapshot recorded yet (a training or loop run records one)")
    times = [_time(d["created_at"]) for d in datasets]
    series: dict[str, list[int]] = defaultdict(lambda: [0] * len(datasets))
    for index, dataset in enumerate(datasets):
        for row in json.loads(dataset["mix_json"]):
            series[row["category"]][index] += row["documents"]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    if max(times) - min(times) < dt.timedelta(days=1):  # less than a day of history: the latest snapshot, as bars
        ax.bar(list(series), [values[-1] for values in series.values()])
        ax.set_title("latest snapshot (history is drawn once it spans more than a day)", fontsize=9, color="#555")
    else:  # each snapshot holds until the next one; the last holds until now
        times.append(dt.datetime.now(dt.timezone.utc))
        ax.stackplot(times, *[values + values[-1:] for values in series.values()], labels=list(series), step="post")
        ax.legend(loc="upper left", fontsize=8)
        _days(ax, times)
    ax.set_ylabel("documents")
    return _figure_html(fig, title)


def _runs_per_week(runs: list[dict]) -> str:
    title = "Loop runs per week"
    runs = [r for r in runs if r["kind"] == "loop"]  # a loop run trains once: its train run is not a second one
    if not runs:
        return _empty(title, "no loop run yet")
    counts: Counter = Counter()
    for run in runs:
        year, week, _ = _time(run["started_at"]).isocalendar()
        counts[(f"{year}-W{week:02d}", run["status"])] += 1
    weeks = sorted({week for week, _ in counts})
    fig, ax = plt.subplots(figsize=(10, 3))
    bottom = [0] * len(weeks)
    for status, color in (("succeeded", "#2e7d32"), ("failed", "#c62828"), ("running", "#f9a825")):
        values = [counts[(week, status)] for week in weeks]
        if any(values):
            ax.bar(weeks, values, bottom=bottom, label=status, color=color)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("loop runs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _figure_html(fig, title)


def _days(ax, times: list[dt.datetime]) -> None:
    """A date axis in days: at least a day wide, ticks on dates, never on seconds."""
    low, high = min(times), max(times)
    if high - low < dt.timedelta(days=1):
        middle = low + (high - low) / 2
        low, high = middle - dt.timedelta(hours=12), middle + dt.timedelta(hours=12)
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, (high - low).days // 6 or 1)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))


def _scores_by_version(models: list[dict], evaluations: list[dict]) -> str:
    title = "Test CER and WER per model version and document type"
    latest = {}
    for row in evaluations:
        if row["split"] == "test":
            latest[row["model_name"]] = json.loads(row["report_json"])
    order = [m["name"] for m in models if m["name"] in latest] + sorted(n for n in latest if n not in {m["name"] for m in models})
    if not order:
        return _empty(title, "no test evaluation recorded yet")
    categories = sorted({c for name in order for c in latest[name]["by_category"]}) + ["all"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=False)
    width = 0.8 / len(categories)
    for ax, metric in zip(axes, ("cer", "wer")):
        for offset, category in enumerate(categories):
            values = [(latest[n]["overall"] if category == "all" else latest[n]["by_category"].get(category, {})).get(metric, float("nan"))
                      for n in order]
            ax.bar([i + offset * width for i in range(len(order))], values, width=width, label=category)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(order))], order, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric.upper())
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].legend(fontsize=7)
    return _figure_html(fig, title)


def _training_trends(runs: list[dict]) -> str:
    title = "Fine-tuning duration, peak VRAM and cost per run"
    trained = [r for r in runs if r["kind"] == "train" and r["status"] == "succeeded"]
    if not trained:
        return _empty(title, "no finished training run yet")
    times = [_time(r["started_at"]) for r in trained]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = (("minutes", [(r["wall_seconds"] or 0) / 60 for r in trained], "no duration recorded"),
              ("peak VRAM (GiB)", [(r["peak_vram_bytes"] or 0) / 2**30 for r in trained], "no data: runs on the CPU use no VRAM"),
              ("cost (USD)", [r["cost_usd"] or 0 for r in trained], "no data: CPU runs cost no GPU hours"))
    for ax, (label, values, nothing) in zip(axes, panels):
        ax.set_title(label, fontsize=10)
        if not any(values):
            ax.text(0.5, 0.5, nothing, ha="center", va="center", transform=ax.transAxes, color="#888", fontsize=9, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.plot(times, values, marker="o")
        ax.set_ylim(0, max(values) * 1.15)
        _days(ax, times)
    return _figure_html(fig, title)


def _learning_curves(runs: list[dict], last: int = 6) -> str:
    title = "Training loss and validation CER of recent runs"
    curves = []
    for run in [r for r in runs if r["kind"] == "train" and r["status"] == "succeeded" and r["metrics_json"]][-last:]:
        metrics = json.loads(run["metrics_json"])
        if metrics.get("loss_by_step") or metrics.get("validation_cer_by_step"):
            curves.append((run["started_at"][:16].replace("T", " "), metrics.get("loss_by_step") or [],
                           metrics.get("validation_cer_by_step") or []))
    if not curves:
        return _empty(title, "no training run has recorded its curves yet")
    fig, (loss_ax, cer_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    for label, loss, cer in curves:
        if loss:
            loss_ax.plot(*zip(*loss), label=label)
        if cer:
            cer_ax.plot(*zip(*cer), marker="o", label=label)
    loss_ax.set(title="training loss", xlabel="optimizer step")
    cer_ax.set(title="validation CER", xlabel="optimizer step")
    cer_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    for ax in (loss_ax, cer_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#888")
    return _figure_html(fig, title)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _before_after(history: list[dict]) -> str:
    decided = [row for row in history if row["challenger_test_cer"] is not None and row["champion_test_cer"] is not None]
    if not decided:
        return _empty("Before / after", "no loop decision recorded yet")
    row = decided[-1]
    lines = [f"<h2>Before / after: {html.escape(str(row['champion']))} &rarr; {html.escape(str(row['challenger']))}</h2>",
             f"<p>{html.escape(row['decision'] or '')}: {html.escape(row['reason'] or '')}</p>",
             "<table><tr><th>document type</th><th>CER before</th><th>CER after</th><th>change</th></tr>"]
    categories = sorted(set(row["champion_cer_by_category"]) | set(row["challenger_cer_by_category"]))
    for category, before, after in [("all", row["champion_test_cer"], row["challenger_test_cer"])] + [
            (c, row["champion_cer_by_category"].get(c), row["challenger_cer_by_category"].get(c)) for c in categories]:
        change = "n/a" if before is None or after is None else f"{after - before:+.2%}"
        css = "" if change == "n/a" else ("better" if after < before else "worse" if after > before else "")
        lines.append(f"<tr><td>{html.escape(category)}</td><td>{_percent(before)}</td><td>{_percent(after)}</td>"
                     f'<td class="{css}">{change}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _history_table(history: list[dict]) -> str:
    if not history:
        return _empty("Loop runs", "no loop run yet")
    lines = ["<h2>Loop runs</h2><table><tr><th>started</th><th>business</th><th>status</th><th>triggers</th>"
             "<th>challenger CER</th><th>champion CER</th><th>decision</th><th>minutes</th><th>cost</th></tr>"]
    for row in history:
        cost = "n/a" if row["cost_usd"] is None else f"${row['cost_usd']:.2f}"
        minutes = "n/a" if row["wall_seconds"] is None else f"{row['wall_seconds'] / 60:.1f}"
        cells = [row["started_at"][:16].replace("T", " "), business_label(row["business"]), row["status"], ", ".join(row["triggers"]),
                 _percent(row["challenger_test_cer"]), _percent(row["champion_test_cer"]), row["decision"] or "", minutes, cost]
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def render_report(registry_location: str | Path) -> str:
    """The report as an HTML string (plots embedded)."""
    with Registry(registry_location) as registry:
        datasets, runs = registry.datasets(), registry.runs()
        models, evaluations = registry.models(), registry.evaluations()
    history = loop_history(registry_location)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [_document_mix(datasets), _runs_per_week(runs), _scores_by_version(models, evaluations),
                _learning_curves(runs), _training_trends(runs), _before_after(history), _history_table(history)]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>ocrloop report</title><style>{_STYLE}</style></head>"
            f"<body><h1>ocrloop report</h1><p class=\"sub\">{html.escape(shown_location(registry_location))} &middot; {generated} &middot; "
            f"{len(runs)} runs, {len(models)} model versions</p>\n" + "\n".join(sections) + "</body></html>\n")


def write_report(registry_location: str | Path, out: Path) -> Path:
    """Write the report to ``out`` atomically."""
    atomic_write_text(out, render_report(registry_location))
    return out
