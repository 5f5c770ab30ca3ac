"""The ``ocrloop`` command: a thin layer over the library. Each command parses flags, calls one
library function, and prints the result. User mistakes end in one ``error:`` line and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ocrloop.config import CONFIG_FILENAME, DOCUMENT_CATEGORIES, OcrloopConfig, apply_overrides
from ocrloop.errors import OcrloopError

app = typer.Typer(help="Fine-tune OCR vision-language models on your own documents.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Validate, inspect, import and synthesize document datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()

WorkspaceOption = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace folder (holds ocrloop.yaml).", envvar="OCRLOOP_WORKSPACE")
]
DatasetOption = Annotated[
    Optional[Path], typer.Option("--dataset", "-d", help="Dataset folder; default: dataset_dir of the workspace.")
]


def _config(workspace: Path, overrides: dict | None = None) -> OcrloopConfig:
    """The workspace's configuration if it has one, else the defaults; flags applied on top."""
    from ocrloop.config import load_config

    config = load_config(workspace) if (workspace / CONFIG_FILENAME).is_file() else OcrloopConfig().resolve(workspace.resolve())
    return apply_overrides(config, overrides or {})


def _dataset_root(workspace: Path, dataset: Path | None) -> tuple[Path, OcrloopConfig]:
    config = _config(workspace)
    return (dataset if dataset is not None else config.dataset_dir), config


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create or complete.")] = Path("."),
    base_model: Annotated[Optional[str], typer.Option(help="Base model: preset, local folder or hub id.")] = None,
) -> None:
    """Create a workspace: data/ocr_documents/{train,val,test}, annotations.json, ocrloop.yaml, registry."""
    from ocrloop.workspace import init_workspace

    config = apply_overrides(OcrloopConfig(), {"base_model": base_model})
    workspace, created = init_workspace(directory, config)
    if created:
        for item in created:
            console.print(f"created {item}", markup=False)
    else:
        console.print(f"{workspace.root} is already a complete workspace; nothing changed", markup=False)


@data_app.command("validate")
def data_validate(workspace: WorkspaceOption = Path("."), dataset: DatasetOption = None) -> None:
    """Check every example and report all problems with their location. Exit 1 if any error."""
    from ocrloop.data.dataset import Dataset

    root, config = _dataset_root(workspace, dataset)
    with console.status(f"validating {root}"):
        result = Dataset.open(root, config.data)
    for problem in result.problems:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}] ", end="")
        console.print(str(problem), markup=False, highlight=False)
    pages = len(result.examples())
    summary = f"{len(result.records)} valid documents ({pages} pages), {len(result.errors)} errors, {len(result.warnings)} warnings"
    if result.errors:
        raise OcrloopError(f"{root}: validation failed: {summary}")
    console.print(f"ok: {summary}", markup=False)


@data_app.command("stats")
def data_stats(
    workspace: WorkspaceOption = Path("."),
    dataset: DatasetOption = None,
    manifest: Annotated[Optional[Path], typer.Option(help="Also write the content-hash manifest (JSON) here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the mix as JSON.")] = False,
) -> None:
    """Document mix by split x category x business, and the dataset's manifest hash."""
    from ocrloop.atomic import atomic_write_json
    from ocrloop.data.dataset import Dataset

    root, config = _dataset_root(workspace, dataset)
    result = Dataset.open(root, config.data)
    mix, snapshot = result.mix(), result.manifest()
    if manifest is not None:
        atomic_write_json(manifest, snapshot.to_json())
    if as_json:
        print(json.dumps({"manifest_hash": snapshot.manifest_hash, "mix": mix.to_json(), "skipped_errors": len(result.errors)}, indent=2))
        return
    table = Table(title=f"Document mix of {root}")
    for column in ("split", "category", "business", "documents", "pages"):
        table.add_column(column, justify="right" if column in ("documents", "pages") else "left")
    for row in mix.to_json():
        table.add_row(row["split"], row["category"], row["business"], str(row["documents"]), str(row["pages"]))
    table.add_row("all", "", "", str(mix.total()), str(sum(mix.pages.values())), style="bold")
    console.print(table)
    console.print(f"manifest_hash {snapshot.manifest_hash}", markup=False)
    if result.errors:
        console.print(f"[yellow]{len(result.errors)} invalid examples left out; run `ocrloop data validate`[/yellow]")


@data_app.command("add")
def data_add(
    files: Annotated[list[Path], typer.Argument(help="Images or PDFs to import.")],
    category: Annotated[str, typer.Option(help="Document type, e.g. receipt, invoice.")],
    business: Annotated[str, typer.Option(help="Business type, e.g. ecommerce, saas.")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "train",
    text: Annotated[Optional[str], typer.Option(help="Ground truth (one file only); default: NAME.md/NAME.txt beside each file. Pages separated by form feeds.")] = None,
    workspace: WorkspaceOption = Path("."),
    dataset: DatasetOption = None,
) -> None:
    """Import labeled documents: copied atomically, duplicates refused, annotations rewritten atomically."""
    from ocrloop.data.add import IncomingDocument, add_documents, read_sidecar_texts

    if text is not None and len(files) != 1:
        raise OcrloopError("--text gives the ground truth of one file; for several files put NAME.md beside each")
    root, config = _dataset_root(workspace, dataset)
    incoming = [IncomingDocument(path, read_sidecar_texts(path, text), category, business, split) for path in files]
    result = add_documents(root, incoming, config.data)
    for record in result.added:
        console.print(f"added {record.source}", markup=False)
    for reason in result.refused:
        console.print(f"refused {reason}", markup=False, style="yellow")
    console.print(f"{len(result.added)} added, {len(result.refused)} refused as duplicates", markup=False)


@data_app.command("synth")
def data_synth(
    n: Annotated[int, typer.Option("--n", help="Number of documents.")] = 40,
    categories: Annotated[str, typer.Option(help="Comma-separated document types.")] = ",".join(DOCUMENT_CATEGORIES),
    businesses: Annotated[Optional[str], typer.Option(help="Comma-separated business types to restrict to.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same documents.")] = 0,
    noise: Annotated[float, typer.Option(help="Scan noise 0 (clean) to 1 (rotation, blur, grain, JPEG).")] = 0.3,
    scale: Annotated[float, typer.Option(help="Page size factor; 1.0 = 850x1100 px letter pages.")] = 1.0,
    workspace: WorkspaceOption = Path("."),
    dataset: DatasetOption = None,
) -> None:
    """Render synthetic receipts, invoices, contracts and tax forms with exact markdown ground truth."""
    from ocrloop.data.synth import SynthOptions, synthesize_dataset

    try:
        options = SynthOptions(
            n=n,
            categories=tuple(c.strip() for c in categories.split(",") if c.strip()),
            businesses=tuple(b.strip() for b in businesses.split(",") if b.strip()) if businesses else None,
            seed=seed,
            noise=noise,
            scale=scale,
        )
    except ValueError as error:
        raise OcrloopError(str(error)) from None
    root, config = _dataset_root(workspace, dataset)
    with _progress() as progress:
        task = progress.add_task("rendering", total=n)
        result = synthesize_dataset(root, options, config.data, progress=lambda done: progress.update(task, completed=done))
    console.print(f"{len(result.added)} documents added to {root}, {len(result.refused)} refused as duplicates", markup=False)


@app.command("eval")
def evaluate(
    predictions: Annotated[Path, typer.Option(help="JSONL of {image, page, text} to score.")],
    compare: Annotated[Optional[Path], typer.Option(help="Predictions of the model to compare against (before).")] = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    lowercase: Annotated[bool, typer.Option(help="Ignore case.")] = False,
    strip_markdown: Annotated[bool, typer.Option(help="Ignore markdown markup (**, #, -, tables).")] = False,
    name: Annotated[Optional[str], typer.Option(help="Name to record the evaluation under.")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Write the full report as JSON here.")] = None,
    workspace: WorkspaceOption = Path("."),
    dataset: DatasetOption = None,
) -> None:
    """CER/WER overall, per category and per business; with --compare, the before/after table."""
    from ocrloop.atomic import atomic_write_json
    from ocrloop.data.dataset import Dataset
    from ocrloop.evaluate.metrics import Normalization, compare_reports
    from ocrloop.evaluate.predictions import read_predictions, score_predictions

    hypotheses = read_predictions(predictions)
    baseline = read_predictions(compare) if compare is not None else None
    root, config = _dataset_root(workspace, dataset)
    examples = Dataset.open(root, config.data).examples(split)
    if not examples:
        raise OcrloopError(f"{root}: no valid examples in split {split!r}")
    normalization = Normalization(lowercase=lowercase, strip_markdown=strip_markdown)
    after = score_predictions(examples, hypotheses, normalization)
    if after.missing:
        console.print(f"[yellow]{len(after.missing)} pages have no prediction and count as empty output[/yellow]")
    _print_report(after.report, f"{predictions.name} on {split} ({len(examples)} pages)")
    payload = {"split": split, "predictions": str(predictions), "report": after.report.to_json()}
    if baseline is not None:
        before = score_predictions(examples, baseline, normalization)
        rows = compare_reports(before.report, after.report)
        _print_comparison(rows, compare.name, predictions.name)
        payload["before"] = before.report.to_json()
    if (Path(workspace) / CONFIG_FILENAME).is_file():
        from ocrloop.registry import Registry

        with Registry(config.registry_path) as registry:
            registry.add_evaluation(name or f"predictions:{predictions.name}", split, after.report.to_json())
    if output is not None:
        atomic_write_json(output, payload)


def _print_report(report, title: str) -> None:
    table = Table(title=title)
    for column in ("group", "pages", "CER", "WER", "accuracy"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = [("overall", report.overall)]
    rows += [(f"category={k}", v) for k, v in sorted(report.by_category.items())]
    rows += [(f"business={k}", v) for k, v in sorted(report.by_business.items())]
    for name, metrics in rows:
        table.add_row(name, str(metrics.pages), f"{metrics.cer:.2%}", f"{metrics.wer:.2%}", f"{metrics.accuracy:.2%}")
    console.print(table)


def _print_comparison(rows, before_name: str, after_name: str) -> None:
    table = Table(title=f"before ({before_name}) -> after ({after_name})")
    for column in ("group", "pages", "CER before", "CER after", "change", "WER before", "WER after"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for row in rows:
        change = "n/a" if row.cer_change == float("inf") else f"{row.cer_change:+.1%}"
        table.add_row(row.group, str(row.pages), f"{row.cer_before:.2%}", f"{row.cer_after:.2%}", change,
                      f"{row.wer_before:.2%}", f"{row.wer_after:.2%}")
    console.print(table)


def main() -> None:
    """Entry point: run the app, turning user errors into one line and exit code 1."""
    try:
        app()
    except OcrloopError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
