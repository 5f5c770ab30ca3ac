"""The ``ocrloop`` command: a thin layer over the library. Each command parses flags, calls one
library function, and prints the result. User mistakes end in one ``error:`` line and exit 1."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ocrloop.bench.settings import (BenchLearnSettings, BenchLinesSettings, BenchOcrSettings, BenchPhotoLoopSettings,
                                    BenchPretrainSettings, BenchServeSettings, BenchSoakSettings, BenchTrainSettings)
from ocrloop.cli_flags import config_flags, settings_flags
from ocrloop.config import CONFIG_FILENAME, DOCUMENT_CATEGORIES, OcrloopConfig, apply_overrides
from ocrloop.errors import OcrloopError
from ocrloop.registry.store import GENERAL, business_key, business_label

app = typer.Typer(help="Fine-tune OCR vision-language models on your own documents.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Validate, inspect, import and synthesize document datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
loop_app = typer.Typer(help="The repeatable fine-tune loop: retrain when data arrives, promote only winners.", no_args_is_help=True)
app.add_typer(loop_app, name="loop")
models_app = typer.Typer(help="Model versions and champions.", no_args_is_help=True)
app.add_typer(models_app, name="models")
config_app = typer.Typer(help="Read and change ocrloop.yaml.", no_args_is_help=True)
app.add_typer(config_app, name="config")
bench_app = typer.Typer(help="Benchmarks: measure and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"ocrloop {version('ocrloop')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Fine-tune OCR vision-language models on your own documents."""

console = Console(soft_wrap=True)  # results on stdout: long lines stay whole for scripts
notices = Console(stderr=True)  # notes about how a command runs, kept out of its results on stdout

WorkspaceOption = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace folder (holds ocrloop.yaml).", envvar="OCRLOOP_WORKSPACE")
]
EngineOption = Annotated[str, typer.Option(help="model (the champion, or --model) or tesseract (Tesseract 5, no model).")]
DatasetOption = Annotated[
    Optional[Path], typer.Option("--dataset", "-d", help="Dataset folder; default: dataset_dir of the workspace.")
]


def _config(workspace: Path, overrides: dict | None = None) -> OcrloopConfig:
    """The workspace's configuration if it has one, else the defaults; flags applied on top."""
    from ocrloop.config import config_file, load_config

    config = load_config(workspace) if config_file(workspace) else OcrloopConfig().resolve(workspace.resolve())
    return apply_overrides(config, overrides or {})


def _dataset_root(workspace: Path, dataset: Path | None) -> tuple[Path, OcrloopConfig]:
    config = _config(workspace)
    return (dataset if dataset is not None else config.dataset_dir), config


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=notices)


@app.command()
@config_flags("", only=("base_model",))
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create or complete.")] = Path("."),
    overrides: dict | None = None,
) -> None:
    """Create a workspace: data/ocr_documents/{train,val,test}, annotations.json, ocrloop.yaml, registry."""
    from ocrloop.workspace import init_workspace

    config = apply_overrides(OcrloopConfig(), overrides)
    workspace, created = init_workspace(directory, config)
    if created:
        for item in created:
            console.print(f"created {item}", markup=False)
    else:
        console.print(f"{workspace.root} is already a complete workspace; nothing changed", markup=False)


@bench_app.command("train")
@settings_flags(BenchTrainSettings)
def bench_train_command(workspace: WorkspaceOption = Path("."), settings: BenchTrainSettings | None = None) -> None:
    """Side-by-side training speed and memory: plain transformers + peft against ocrloop's path, same workload.

    Run inside a workspace, ocrloop's ratios are also recorded in its registry (and so reach /metrics)."""
    from ocrloop.bench.train import bench_train

    registry_location = _config(workspace).registry_location if (workspace / CONFIG_FILENAME).is_file() else None
    try:
        results = bench_train(registry_location=registry_location, **{**settings.model_dump(), "categories": tuple(settings.categories)})
    except ValueError as error:
        raise OcrloopError(str(error)) from None
    for name, result in results["variants"].items():
        if result["status"] != "succeeded":
            console.print(f"{name}: FAILED {result['error']}", markup=False)
            continue
        rate = result.get("whole_run_samples_per_second", result["steady_samples_per_second"])
        ratio = f", {result['speedup_vs_baseline']:.2f}x the baseline" if "speedup_vs_baseline" in result else ""
        if "scaling_vs_one_process" in result:
            ratio += f", {result['scaling_vs_one_process']:.2f}x one process"
            if not result["same_backend_as_one_process"]:
                ratio += " (NOT scaling alone: another backend than on one process)"
        if result.get("same_trainable_parameters_as_baseline") is False:
            ratio += " (NOT like for like: different trainable parameters)"
        vram = f", peak VRAM {result['peak_vram_allocated_gib']:.1f} GiB" if result["peak_vram_allocated_gib"] is not None else ""
        mfu = f", MFU {result['mfu']:.1%}" if result.get("mfu") is not None else ""
        console.print(f"{name} ({result['backend']}): {rate:.2f} samples/s{ratio}{vram}{mfu}", markup=False)
    for name, scaling in results.get("scaling_medians", {}).items():
        console.print(f"{name}: median {scaling:.2f}x the median one-process run", markup=False)


@bench_app.command("ocr")
@settings_flags(BenchOcrSettings)
def bench_ocr_command(settings: BenchOcrSettings | None = None) -> None:
    """OCR generation speed: pages/s and seconds per page, one by one and batched, output lengths like real pages."""
    from ocrloop import distributed
    from ocrloop.bench.ocr import bench_ocr, bench_ocr_processes
    from ocrloop.cli_flags import settings_argv

    if settings.experts == "grouped_mm" and settings.cache == "static":
        raise OcrloopError("--experts grouped_mm cannot run in the static cache's CUDA graphs; add --cache dynamic")
    if settings.processes != [distributed.world_size()]:  # launch each count itself, then compare them
        argv = settings_argv(settings.model_copy(update={"processes": None, "out": None}))
        bench_ocr_processes(settings.out, argv, tuple(settings.processes), progress=lambda line: notices.print(line, markup=False))
        return
    bench_ocr(settings.out, family=settings.family, size=settings.size, resolution=settings.resolution,
              batch_sizes=tuple(settings.batch_sizes), pages=settings.pages,
              cache_implementation={"static": "static", "dynamic": None, "continuous": "continuous"}[settings.cache],
              tokens_per_page=settings.tokens_per_page, profile_tokens=settings.profile_tokens, experts=settings.experts,
              work=settings.work,
              progress=lambda line: notices.print(line, markup=False))


@bench_app.command("serve")
@settings_flags(BenchServeSettings)
def bench_serve_command(settings: BenchServeSettings | None = None) -> None:
    """The service under concurrent clients against bench ocr: pages/s, tokens/s, p50/p99, 5xx, peak GPU memory."""
    from ocrloop.bench.serve_load import bench_serve

    if settings.compare_with is not None and not settings.compare_with.is_file():
        raise OcrloopError(f"{settings.compare_with}: no bench ocr result there")
    total = settings.warmup_requests + settings.requests
    with _progress() as progress:
        task = progress.add_task(f"{settings.clients} clients", total=total)
        result = bench_serve(**settings.model_dump(), progress=lambda done, _: progress.update(task, completed=done),
                             log=lambda line: notices.print(line, markup=False))
    latency, bench = result["latency_seconds"], result.get("bench_ocr")
    ratio = (f", {bench['service_over_bench_at_max_batch_pages']:.0%} of bench ocr at batch {settings.max_batch_pages}"
             if bench and bench["service_over_bench_at_max_batch_pages"] else "")
    console.print(f"{result['pages_per_second']:.2f} pages/s ({result['generated_tokens_per_second']:.0f} tokens/s){ratio}; "
                  f"p50 {latency['p50']:.2f} s, p99 {latency['p99']:.2f} s; 5xx {result['server_errors']}, "
                  f"lost {result['lost_answers']}", markup=False)


@bench_app.command("soak")
@settings_flags(BenchSoakSettings)
def bench_soak_command(workspace: WorkspaceOption = Path("."), settings: BenchSoakSettings | None = None) -> None:
    """Soak a real `ocrloop serve` on loopback with valid and hostile requests: 5xx, lost answers, RSS, p50/p99."""
    from ocrloop.bench.soak import bench_soak

    _workspace(workspace)
    with _progress() as progress:
        task = progress.add_task(f"soak, {settings.connections} connections", total=settings.requests)
        result = bench_soak(workspace, settings.out, requests=settings.requests, connections=settings.connections,
                            engine=settings.engine, progress=lambda done: progress.update(task, completed=done))
    latency = result["latency_seconds"]
    console.print(f"{result['requests']} requests in {result['seconds']} s: {result['requests_per_second']} req/s, "
                  f"p50 {latency['p50'] * 1000:.0f} ms, p99 {latency['p99'] * 1000:.0f} ms; 5xx {result['server_errors']}, "
                  f"lost {result['lost_answers']}, RSS {result['rss_bytes']['end_vs_after_first_tenth']:+.1%}", markup=False)
    failed = [name for name, ok in result["passed"].items() if not ok]
    if failed:
        raise OcrloopError(f"soak failed: {', '.join(failed)} (see {settings.out})")


@bench_app.command("lines")
@settings_flags(BenchLinesSettings)
def bench_lines_command(settings: BenchLinesSettings | None = None) -> None:
    """Training speed of a small model, fully fine-tuned on single-line images: samples/s, page check, GPU busy share."""
    from ocrloop.bench.lines import bench_lines

    results = bench_lines(console=notices, **settings.model_dump())
    busy = results["profile"].get("gpu_busy_fraction")
    console.print(f"{results['samples_per_second']:.0f} samples/s over {results['workload']['steps']} steps "
                  f"(steady {results['steady_samples_per_second']:.0f}); page check {results['page_check_seconds']:.1f} s"
                  + (f"; GPU busy {busy:.0%} of profiled steps" if busy is not None else ""), markup=False)


@bench_app.command("learn")
@settings_flags(BenchLearnSettings)
def bench_learn_command(settings: BenchLearnSettings | None = None) -> None:
    """Learning curve: a small model trained from scratch, held-out CER/WER per category against Tesseract."""
    from ocrloop.bench.learn import add_tesseract_documents, bench_learn

    if settings.add_tesseract:
        results = add_tesseract_documents(settings.out, settings.work)
    else:
        values = settings.model_dump(exclude={"add_tesseract"})
        results = bench_learn(console=notices, **{**values, "categories": tuple(settings.categories)})
    for point in results["curve"]:
        console.print(f"step {point['step']}: held-out CER {point['cer']:.2%}, WER {point['wer']:.2%}", markup=False)
    tesseract = results["tesseract"]
    if "error" in tesseract:
        console.print(f"Tesseract not scored: {tesseract['error']}", markup=False)
        return
    console.print(f"{tesseract['engine']}: CER {tesseract['plain']['cer']:.2%} (markup counted), "
                  f"{tesseract['strip_markdown']['cer']:.2%} (markup ignored); the model, markup ignored: "
                  f"{results['final_strip_markdown']['cer']:.2%}", markup=False)


def _pooled_cer(scores: dict) -> str:
    """A bench's pooled CER with its bootstrap interval, where the result has one (results before it did not)."""
    interval = scores.get("cer_interval_95")
    return f"{scores['cer']:.2%}" + (f" (95% interval {interval[0]:.2%}-{interval[1]:.2%})" if interval else "")


@bench_app.command("pretrain")
@settings_flags(BenchPretrainSettings)
def bench_pretrain_command(settings: BenchPretrainSettings | None = None) -> None:
    """Train a base reader from scratch (glyphs, lines, blocks, then pages) and score it on held-out pages, with a blind control."""
    from ocrloop.bench.pretrain import add_tesseract_pages, bench_pretrain

    if settings.add_tesseract:
        results = add_tesseract_pages(settings.out, settings.work)
    else:
        results = bench_pretrain(settings, console=notices)
    for stage in results["stages"]:
        after = stage["heldout_pages_after"]
        console.print(f"{stage['stage']}: {stage['steps']} steps, held-out {stage['stage']} CER {stage['curve'][-1]['cer']:.2%}"
                      + (f", held-out pages {after['cer']:.2%}" if after else ""), markup=False)
    pages, blind, tesseract = (results[k] for k in ("heldout_pages", "blind_control", "tesseract"))
    line = (f"{pages['pages']} held-out pages, markup ignored: CER {_pooled_cer(pages['strip_markdown'])}, median page "
            f"{pages['strip_markdown']['median_page_cer']:.2%}")
    if "first_pages" in pages:
        first = pages["first_pages"]
        line += f" (the first {first['pages']}: {_pooled_cer(first['strip_markdown'])})"
    line += f"; blank images {blind['strip_markdown']['cer']:.2%}"
    line += f"; {tesseract['engine']} {_pooled_cer(tesseract['strip_markdown'])}" if "engine" in tesseract else \
        f"; Tesseract not scored ({tesseract['error']})"
    console.print(line + f"; {results['total_seconds'] / 60:.1f} min", markup=False)
    for key, pages_read in (("heldout_photos", "phone photos"), ("heldout_unseen_layout", "clean pages")):
        if key in results:
            console.print(f"bench photo-loop's held-out documents (a layout no lesson uses) as {pages_read}, markup "
                          f"ignored: CER {results[key]['strip_markdown']['cer']:.2%}", markup=False)


@bench_app.command("photo-loop")
@settings_flags(BenchPhotoLoopSettings)
def bench_photo_loop_command(settings: BenchPhotoLoopSettings | None = None) -> None:
    """Fine-tune a reader on phone photos of one business through the loop; score it before and after on held-out photos, with Tesseract and a blind control."""
    from ocrloop.bench.photo_loop import OTHER_PAGE_SETS, add_tesseract_photos, bench_photo_loop

    if settings.add_tesseract:
        results = add_tesseract_photos(settings)
    else:
        results = bench_photo_loop(settings, console=notices)
    console.print(f"loop: {results['loop']['reason']} (champion {results['loop']['champion']})", markup=False)
    readers = (("reader", "the reader"), ("champion", "the champion"), ("blind_control", "champion, blank pages"),
               ("tesseract", "Tesseract"))
    for pages, scored in (("held-out photos", results),
                          *((label, results.get(key, {})) for key, label in OTHER_PAGE_SETS.items())):
        for key, label in readers:
            if key in scored:
                scores = scored[key]
                console.print(f"{pages}, {label}: " + (f"CER {_pooled_cer(scores['strip_markdown'])}, markup ignored"
                                                       if "strip_markdown" in scores else f"not scored ({scores['error']})"),
                              markup=False)


@config_app.command("set", context_settings={"ignore_unknown_options": True})  # `training.epochs -1` is a value
def config_set(
    key: Annotated[str, typer.Argument(help="Dotted setting, e.g. training.max_steps or loop.new_documents_threshold.")],
    value: Annotated[str, typer.Argument(help="New value, read as YAML; a list setting also takes a, b, c.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Change one setting of the workspace's ocrloop.yaml (validated before it is written)."""
    from ocrloop.config import set_config_value

    set_config_value(workspace, key, value)
    console.print(f"{key} = {value}", markup=False)


@config_app.command("show")
def config_show(workspace: WorkspaceOption = Path(".")) -> None:
    """The resolved configuration: the file's values over the defaults."""
    from ocrloop.config import dump_config

    print(dump_config(_config(workspace)), end="")


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
    split: Annotated[Optional[str], typer.Option(help="train, val or test; default: chosen by each document's content hash "
                                                      "(data.val_fraction, data.test_fraction), the same on every run.")] = None,
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
    if result.cleaned:
        notices.print(f"removed {len(result.cleaned)} file(s) an interrupted `data add` left behind", markup=False)
    for record in result.added:
        console.print(f"added {record.source}", markup=False)
    for reason in result.refused:
        console.print(f"refused {reason}", markup=False, style="yellow")
    splits = ", ".join(f"{n} {s}" for s in ("train", "val", "test") if (n := sum(r.split == s for r in result.added)))
    console.print(f"{len(result.added)} added{f' ({splits})' if splits else ''}, {len(result.refused)} refused as duplicates",
                  markup=False)


@data_app.command("synth")
def data_synth(
    n: Annotated[int, typer.Option("--n", help="Number of documents.")] = 40,
    categories: Annotated[str, typer.Option(help="Comma-separated document types.")] = ",".join(DOCUMENT_CATEGORIES),
    businesses: Annotated[Optional[str], typer.Option(help="Comma-separated business types to restrict to.")] = None,
    seed: Annotated[int, typer.Option(help="Same seed, same documents.")] = 0,
    noise: Annotated[float, typer.Option(help="Scan noise 0 (clean) to 1 (rotation, blur, grain, JPEG).")] = 0.3,
    scale: Annotated[float, typer.Option(help="Page size factor; 1.0 = 850x1100 px letter pages.")] = 1.0,
    workers: Annotated[int, typer.Option(help="Rendering processes (more than 1: other documents for the same seed).")] = 1,
    style: Annotated[str, typer.Option(help="scan (flat pages, --noise) or photo (phone photos of paper: perspective, "
                                            "shadow, faded ink, blur, JPEG quality 20-35).")] = "scan",
    templates: Annotated[Optional[str], typer.Option(help="Comma-separated layouts to draw from (receipts and invoices "
                                                          "have 0-2, the others 0); default 0.")] = None,
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
            style=style,
            templates=tuple(_templates(templates)) if templates else None,
        )
    except ValueError as error:
        raise OcrloopError(str(error)) from None
    root, config = _dataset_root(workspace, dataset)
    with _progress() as progress:
        task = progress.add_task("rendering", total=n)
        if workers < 1:
            raise OcrloopError("--workers must be at least 1")
        result = synthesize_dataset(root, options, config.data, progress=lambda done: progress.update(task, completed=done),
                                    workers=workers)
    console.print(f"{len(result.added)} documents added to {root}, {len(result.refused)} refused as duplicates", markup=False)


def _templates(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OcrloopError(f"--templates takes numbers separated by commas, e.g. 0,1 (got {text!r})") from None


@app.command("eval")
@config_flags("training", only=("resolution", "prompt", "max_new_tokens", "read_batch_size", "backend"))
@config_flags("", only=("dataset_dir",), names={"dataset_dir": ("--dataset", "-d")})
def evaluate(
    model: Annotated[Optional[str], typer.Option(help="Model to evaluate: folder, preset or hub id.")] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Or: a JSONL of {image, page, text} to score.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="Or: an off-the-shelf OCR engine to score (tesseract).")] = None,
    compare: Annotated[Optional[str], typer.Option(help="Baseline (before) to compare against: a model, a predictions .jsonl, or tesseract.")] = None,
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    lowercase: Annotated[bool, typer.Option(help="Ignore case.")] = False,
    strip_markdown: Annotated[bool, typer.Option(help="Ignore markdown markup (**, #, -, tables).")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Write the full report as JSON here.")] = None,
    save_predictions: Annotated[Optional[Path], typer.Option(help="Write the model's page texts as JSONL here.")] = None,
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """CER/WER overall, per category and per business; with --compare, the before/after table.

    --resolution, --prompt and --max-new-tokens read a model at those settings instead of its own."""
    if model is not None:
        from ocrloop.models.loading import prepare_backend

        prepare_backend(overrides.get("training.backend", "auto"))
    from ocrloop.atomic import atomic_write_json
    from ocrloop.data.dataset import Dataset
    from ocrloop.evaluate.metrics import Normalization, compare_reports
    from ocrloop.evaluate.predictions import read_predictions, score_predictions, write_predictions

    from ocrloop.evaluate.tesseract import ENGINE, tesseract_name

    if sum(x is not None for x in (model, predictions, engine)) != 1:
        raise OcrloopError("give exactly one of --model, --predictions or --engine")
    if engine is not None and engine != ENGINE:
        raise OcrloopError(f"unknown --engine {engine!r}; the one available is {ENGINE}")
    explicit = {name: overrides.pop(f"training.{name}", None) for name in ("resolution", "prompt", "max_new_tokens")}
    config = _config(workspace, overrides)
    given = read_predictions(predictions) if predictions is not None else None
    baseline = read_predictions(Path(compare)) if compare is not None and compare.endswith(".jsonl") else None
    data = Dataset.open(config.dataset_dir, config.data)
    examples = data.examples(split)
    if not examples:
        raise OcrloopError(f"{config.dataset_dir}: no valid examples in split {split!r}")
    normalization = Normalization(lowercase=lowercase, strip_markdown=strip_markdown)

    def score(source_model: str | None, source_predictions: dict | None):
        if source_predictions is not None:
            return score_predictions(examples, source_predictions, normalization).report, None
        texts = _read_pages(source_model, config, data, examples, explicit)
        keyed = {(e.source, e.page): t for e, t in zip(examples, texts)}
        return score_predictions(examples, keyed, normalization).report, texts

    if engine is not None:
        model = ENGINE
    after_name = tesseract_name() if engine is not None else (model or predictions.name)
    after, texts = score(model, given)
    _print_report(after, f"{after_name} on {split} ({len(examples)} pages)")
    payload = {"split": split, "evaluated": after_name, "report": after.to_json()}
    if compare is not None:
        before, _ = score(None if baseline is not None else compare, baseline)
        compare = tesseract_name() if compare == ENGINE else compare
        _print_comparison(compare_reports(before, after), compare, after_name)
        payload["before"] = {"evaluated": compare, "report": before.to_json()}
    if (Path(workspace) / CONFIG_FILENAME).is_file():
        from ocrloop.registry import Registry
        from ocrloop.registry.champions import registered_name

        with Registry(config.registry_location) as registry:
            name = after_name if engine is not None else (
                registered_name(registry, model) if model else f"predictions:{predictions.name}")
            registry.add_evaluation(name, split, after.to_json())
    if save_predictions is not None and texts is not None:
        write_predictions(save_predictions, examples, texts)
    if output is not None:
        atomic_write_json(output, payload)


def _read_pages(source: str, config: OcrloopConfig, data, examples, explicit: dict) -> list[str]:
    from ocrloop.evaluate.evaluator import read_source

    if source != "tesseract":
        notices.print(f"loading {source}", markup=False)  # loading a full-size model takes a while: say so first
    with _progress() as progress:
        task = progress.add_task(f"reading with {Path(source).name}", total=len(examples))
        texts, cached = read_source(source, config, data, examples, explicit,
                                    progress=lambda done: progress.update(task, completed=done),
                                    on_note=lambda note: notices.print(f"note: {note}", markup=False))
    if cached:
        notices.print(f"{cached} page(s) read with image features cached by the training run", markup=False)
    return texts


@app.command("train")
@config_flags("training")
@config_flags("", only=("base_model", "dataset_dir"), names={"base_model": ("--model",), "dataset_dir": ("--dataset", "-d")})
def train_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, the adapter and the run card.")],
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --output.")] = False,
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """Fine-tune a model on the dataset: LoRA by default, Unsloth on CUDA, plain transformers + peft elsewhere.

    On several GPUs (or CPU processes): `--gpus N`, or `torchrun --nproc-per-node N -m ocrloop train ...`."""
    config = _config(workspace, overrides)
    _launch_processes(config.training.gpus)
    from ocrloop.models.loading import prepare_backend

    prepare_backend(config.training.backend, compile=config.training.compile)
    from ocrloop.registry import Registry
    from ocrloop.train.finetune import train

    from ocrloop.distributed import is_main_process

    with Registry(config.registry_location) as registry:
        result = train(config, output, resume=resume, registry=registry, console=notices)  # its log: stderr
    if not is_main_process():  # under torchrun, rank 0 reports for every process
        return
    final = result.card["metrics"]["final_validation"]
    speed = result.card["speed"]
    console.print(f"saved {result.output_dir} (model {result.model_name}, run {result.run_id})", markup=False)
    if final:
        console.print(f"validation CER {final['cer']:.2%}, WER {final['wer']:.2%}", markup=False)
    console.print(f"{speed['steps']} steps in {speed['train_seconds']:.1f}s", markup=False)


@app.command()
@config_flags("training", only=("backend",))
@config_flags("", only=("base_model",), names={"base_model": ("--model",)})
def doctor(
    resolution: Annotated[Optional[str], typer.Option(help="Resolution for the test steps (default: the family's smallest).")] = None,
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """Check the set-up: Python, torch, CUDA, unsloth, the model loads, LoRA attaches, a few steps train."""
    from ocrloop.models.loading import prepare_backend

    prepare_backend(overrides.get("training.backend", "auto"))
    from ocrloop.doctor import run_checks

    config = _config(workspace, overrides)
    marks = {"pass": "[green]pass[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]skip[/yellow]"}

    def show(check) -> None:
        console.print(f"{marks[check.status]} {check.name:<16}", end=" ")
        console.print(check.detail + (f"  (hint: {check.hint})" if check.hint and check.status == "fail" else ""),
                      markup=False, highlight=False)

    checks = run_checks(config.base_model, backend=config.training.backend, resolution=resolution, report=show)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        raise OcrloopError(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def _workspace(workspace: Path):
    from ocrloop.workspace import Workspace

    return Workspace.load(workspace)


@loop_app.command("run")
@config_flags("training", only=("gpus",))
def loop_run(
    business: Annotated[Optional[str], typer.Option(help="Run the loop for this business's documents only (default: general).")] = None,
    all_businesses: Annotated[bool, typer.Option("--all-businesses", help="One loop per business the dataset or registry knows.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say whether and why it would retrain; change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Retrain even if no trigger fires.")] = False,
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """Decide whether to retrain (and say why), train a challenger, promote it only if it beats the champion.

    With `--gpus N` (or under `torchrun --nproc-per-node N -m ocrloop loop run`), rank 0 runs the loop and every
    process trains."""
    ws = _workspace(workspace)
    _launch_processes(apply_overrides(ws.config, overrides or {}).training.gpus)
    from ocrloop.models.loading import prepare_backend

    prepare_backend(ws.config.training.backend, compile=ws.config.training.compile)
    from ocrloop import distributed

    if distributed.world_size() == 1:
        _loop_run(ws, business, all_businesses, dry_run, force)
        return
    distributed.join_process_group()
    try:
        if distributed.is_main_process():
            try:
                _loop_run(ws, business, all_businesses, dry_run, force, on_training=distributed.send_to_all)
            finally:
                distributed.send_to_all(None)  # no more training: the other processes may leave
        else:
            from ocrloop.train.finetune import train

            while (job := distributed.receive_from_main()) is not None:
                train(**job, console=notices)
    finally:
        distributed.leave_process_group()


def _loop_run(ws, business: str | None, all_businesses: bool, dry_run: bool, force: bool, on_training=None) -> None:
    from ocrloop.loop.recipe import FineTuneLoop
    from ocrloop.workspace import known_businesses

    business = _business(business)
    if all_businesses and business:
        raise OcrloopError("give --business or --all-businesses, not both")
    targets = sorted(known_businesses(ws.config)) if all_businesses else [business]
    blocked = []
    for target in targets:
        result = FineTuneLoop(ws, business=target, dry_run=dry_run, force=force, console=notices,
                              on_training=on_training).run()  # log: stderr
        if result.blocked:
            blocked.append(f"{business_label(target)}: {result.reason}")
            continue
        label = business_label(target)
        for trigger in result.triggers if dry_run or not result.ran else []:
            console.print(f"trigger {trigger.name}: {trigger.reason}", markup=False)
        if not result.ran:
            console.print(f"{label}: {result.reason}", markup=False)
        elif result.promoted:
            console.print(f"{label}: promoted {result.challenger} over {result.champion}: {result.reason}", markup=False)
        else:
            console.print(f"{label}: kept {result.champion}; {result.challenger} rejected: {result.reason}", markup=False)
    if blocked:
        raise OcrloopError("; ".join(blocked))


@loop_app.command("status")
def loop_status(workspace: WorkspaceOption = Path(".")) -> None:
    """Champions per business, the last run, and what would trigger a run now."""
    from ocrloop.models.loading import prepare_backend

    ws = _workspace(workspace)
    prepare_backend(ws.config.training.backend)
    from ocrloop.loop.recipe import FineTuneLoop
    from ocrloop.registry import Registry
    from ocrloop.registry.champions import serving_model
    from ocrloop.workspace import known_businesses

    table = Table(title="who serves OCR")
    for column in ("business", "model", "from"):
        table.add_column(column)
    with Registry(ws.config.registry_location) as registry:
        for business in (None, *sorted(known_businesses(ws.config))):
            serving = serving_model(registry, ws.config.base_model, business)
            table.add_row(business_label(business), serving.name, business_label(serving.key) if serving.key != "base" else "base")
        runs = registry.runs("loop")
    console.print(table)
    if runs:
        last = runs[-1]
        console.print(f"last loop run {last['id']} ({last['business']}): {last['status']}", markup=False)
    result = FineTuneLoop(ws, dry_run=True, console=notices).run()
    for trigger in result.triggers:
        console.print(f"would trigger {trigger.name}: {trigger.reason}", markup=False)
    console.print(f"now: {result.reason}", markup=False)


@loop_app.command("history")
def loop_history(
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as JSON.")] = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Every loop run: triggers, document mix, metrics per version and category, decision, duration, VRAM, cost."""
    from ocrloop.loop.history import loop_history as history

    ws = _workspace(workspace)
    rows = history(ws.config.registry_location)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        console.print(f"[bold]{row['started_at'][:19]}[/bold] {row['business']} {row['status']} "
                      f"triggers={','.join(row['triggers'])} documents={row['documents']}", highlight=False)
        if row["challenger"]:
            console.print(f"  challenger {row['challenger']} test CER {_pct(row['challenger_test_cer'])} vs champion "
                          f"{row['champion']} {_pct(row['champion_test_cer'])}: {row['decision']} ({row['reason']})",
                          markup=False, highlight=False)
            for category, cer in sorted(row["challenger_cer_by_category"].items()):
                console.print(f"    {category}: {_pct(cer)} vs {_pct(row['champion_cer_by_category'].get(category))}",
                              markup=False, highlight=False)
        vram = f", peak VRAM {row['peak_vram_gib']:.1f} GiB" if row["peak_vram_gib"] is not None else ""
        error = f", {row['error']}" if row["error"] else ""
        console.print(f"  {(row['wall_seconds'] or 0) / 60:.1f} min{vram}, ${row['cost_usd'] or 0:.2f}{error}",
                      markup=False, highlight=False)


def _business(name: str | None) -> str | None:
    """A --business value as the library takes it: None for the general scope (``general`` or nothing)."""
    return None if business_key(name) == GENERAL else name


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


@models_app.command("list")
def models_list(workspace: WorkspaceOption = Path(".")) -> None:
    """Every model version with its latest test CER and where it is champion."""
    from ocrloop.registry import Registry
    from ocrloop.registry.champions import champions_by_model, latest_test_cer

    ws = _workspace(workspace)
    with Registry(ws.config.registry_location) as registry:
        champions = champions_by_model(registry)
        # Fits 80 columns: the family and the full time stamp are in `ocrloop models show NAME`.
        table = Table(title="models", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "business", "test CER", "champion of", "created"):
            table.add_column(column, no_wrap=True, justify="right" if column == "test CER" else "left")
        for row in registry.models():
            cer = latest_test_cer(registry, row["name"])
            table.add_row(row["name"], row["business"] or "", _pct(cer) if cer is not None else "",
                          ", ".join(sorted(champions.get(row["name"], []))), row["created_at"][:10])
    console.print(table)


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="Model name from `models list`.")],
                workspace: WorkspaceOption = Path(".")) -> None:
    """One model: where it is, what it came from, every evaluation and promotion decision."""
    from ocrloop.registry import Registry

    ws = _workspace(workspace)
    with Registry(ws.config.registry_location) as registry:
        row = registry.model(name)
        if row is None:
            raise OcrloopError(f"no model named {name!r}; see `ocrloop models list`")
        payload = {"model": row, "evaluations": [{k: e[k] for k in ("split", "cer", "wer", "created_at")} for e in registry.evaluations(name)],
                   "promotions": [p for p in registry.promotions() if p["model_name"] == name]}
    print(json.dumps(payload, indent=2, default=str))


@models_app.command("export")
def models_export(model: Annotated[str, typer.Argument(help="Model name from `models list`, or a model folder.")],
                  out: Annotated[Path, typer.Option("--out", help="New folder for the exported weights.")],
                  workspace: WorkspaceOption = Path(".")) -> None:
    """Write a model as plain transformers weights (adapters merged) for vLLM, SGLang or from_pretrained."""
    from ocrloop.models.loading import export_model
    from ocrloop.registry import Registry

    source = model
    if (workspace / CONFIG_FILENAME).is_file():
        with Registry(_config(workspace).registry_location) as registry:
            row = registry.model(model)
            source = row["path"] if row else model
    if source == model and not Path(model).expanduser().is_dir():
        raise OcrloopError(f"{model}: neither a model in this workspace's registry nor a folder; see `ocrloop models list`")
    with notices.status(f"exporting {model}"):
        folder = export_model(source, out)
    console.print(f"exported {model} to {folder}", markup=False)


@models_app.command("promote")
def models_promote(name: Annotated[str, typer.Argument(help="Model to make champion.")],
                   business: Annotated[Optional[str], typer.Option(help="Champion for this business (default: general).")] = None,
                   force: Annotated[bool, typer.Option("--force", help="Promote even if it reads the test split worse than the champion.")] = False,
                   workspace: WorkspaceOption = Path(".")) -> None:
    """Make a model the champion by hand (one that scores worse than the champion needs --force)."""
    from ocrloop.registry import Registry
    from ocrloop.registry.champions import promote

    ws = _workspace(workspace)
    with Registry(ws.config.registry_location) as registry:
        console.print(promote(registry, name, business, force=force), markup=False)


@models_app.command("rollback")
def models_rollback(business: Annotated[Optional[str], typer.Option(help="Business whose champion to roll back (default: general).")] = None,
                    workspace: WorkspaceOption = Path(".")) -> None:
    """Make the previous champion the champion again (the base model when there was none before)."""
    from ocrloop.registry import Registry
    from ocrloop.registry.champions import roll_back

    ws = _workspace(workspace)
    with Registry(ws.config.registry_location) as registry:
        restored, replaced = roll_back(registry, business, ws.config.base_model)
    console.print(f"{restored} is the {business_label(business)} champion again (was {replaced})", markup=False)


def _launch_processes(gpus: int) -> None:
    """Run this command as ``gpus`` processes through torchrun and exit with their status, when it asks for several
    and no launcher started it; otherwise go on in this process."""
    from ocrloop import distributed

    status = distributed.relaunch(gpus)
    if status is not None:
        raise typer.Exit(status)


@app.command("ocr")
@config_flags("serve", only=("pii_policy", "fast_decode"))
@config_flags("training", only=("prompt", "resolution", "read_batch_size", "gpus"), names={"resolution": ("--resolution", "--mode")})
def ocr_command(
    paths: Annotated[list[Path], typer.Argument(help="Images, PDFs or folders of them.")],
    business: Annotated[Optional[str], typer.Option(help="Use this business's champion.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Use this model instead of a champion.")] = None,
    engine: EngineOption = "model",
    output_format: Annotated[str, typer.Option("--format", help="md or json")] = "md",
    out: Annotated[Optional[Path], typer.Option(help="Write one file per document here; finished files are skipped on rerun.")] = None,
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """OCR files with the champion (of --business, else general, else the base model), or with Tesseract.

    With `--gpus N --out OUT` (or under `torchrun --nproc-per-node N -m ocrloop ocr DIR --out OUT`), each process reads
    its share of the documents; OUT/index.jsonl lists them all in input order. A rerun skips finished documents."""
    from ocrloop.data.files import SUPPORTED_SUFFIXES

    if output_format not in ("md", "json"):
        raise OcrloopError(f"--format must be md or json, not {output_format!r}")
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise OcrloopError(f"{path}: no such file or folder")
    from ocrloop.agent import output_paths, write_index
    from ocrloop import distributed

    gpus = _config(workspace, overrides).training.gpus
    if (distributed.world_size() > 1 or gpus > 1) and out is None:
        raise OcrloopError("on several processes each writes its share of the results: give --out")
    _launch_processes(gpus)
    target = output_paths(files, out, output_format)
    remaining = [f for f in files if target[f] is None or not target[f].exists()]
    if out and distributed.is_main_process() and len(remaining) < len(files):
        notices.print(f"{len(files) - len(remaining)} already done in {out}, skipped", markup=False)
    todo = distributed.shard(remaining)
    distributed.join_process_group()
    try:
        _read_files(todo, target, output_format, business, model, engine, workspace, overrides)
    finally:
        if out is not None:
            distributed.barrier()  # every share is finished (or has failed) before the index is written
            if distributed.is_main_process():
                write_index(out, files, target)
        distributed.leave_process_group()


def _read_files(todo: list[Path], target: dict, output_format: str, business: str | None, model: str | None, engine: str,
                workspace: Path, overrides: dict) -> None:
    from ocrloop import distributed
    from ocrloop.atomic import atomic_write_json, atomic_write_text
    from ocrloop.pii import PiiRejected

    if not todo:
        return
    # Prompt and resolution given here are explicit reading choices; unset, the model reads with its own.
    prompt, mode = overrides.pop("training.prompt", None), overrides.pop("training.resolution", None)
    config = _config(workspace, overrides)
    from ocrloop.agent import OCRAgent

    if engine == "model":
        from ocrloop.models.loading import prepare_backend

        prepare_backend(config.training.backend)
    agent = OCRAgent.load(workspace, business=_business(business), model=model, engine=engine)
    for note in agent.settings(prompt=prompt, resolution=mode)[1] if engine == "model" else ():
        notices.print(f"note: {note}", markup=False)
    if config.serve.fast_decode and engine == "model":
        agent.bundle.enable_fast_decode()
    refused = failed = read_pages = 0
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"OCR with {agent.model_name}", total=len(todo))
        documents = agent.read_files(todo, prompt=prompt, resolution=mode, pii_policy=config.serve.pii_policy,
                                     batch_pages=config.training.read_batch_size)
        for path, document in documents:
            if isinstance(document, PiiRejected):
                refused += 1
                progress.console.print(f"{path}: refused, {document} (pii_policy=reject)", markup=False, soft_wrap=True)
                progress.advance(task)
                continue
            if isinstance(document, OcrloopError):  # one unreadable file does not stop the others
                failed += 1
                progress.console.print(f"{document}", markup=False, soft_wrap=True)
                progress.advance(task)
                continue
            if target[path] is None:
                print(json.dumps(document.to_json(), ensure_ascii=False) if output_format == "json" else document.markdown)
            elif output_format == "json":
                atomic_write_json(target[path], document.to_json())
            else:
                atomic_write_text(target[path], document.markdown + "\n")
            read_pages += len(document.pages)
            progress.advance(task)
    seconds = time.perf_counter() - started
    share = f"process {distributed.rank() + 1} of {distributed.world_size()}: " if distributed.world_size() > 1 else ""
    notices.print(f"{share}read {read_pages} pages of {len(todo) - refused - failed} documents in {seconds:.1f} s "
                  f"({read_pages / seconds:.2f} pages/s)", markup=False)
    problems = [f"{refused} refused for personal data" if refused else "", f"{failed} unreadable" if failed else ""]
    if refused or failed:
        raise OcrloopError(f"{' and '.join(p for p in problems if p)}, of {len(todo)} documents")


@app.command("serve")
@config_flags("serve")
def serve_command(
    engine: EngineOption = "model",
    workspace: WorkspaceOption = Path("."),
    overrides: dict | None = None,
) -> None:
    """The OCR service: POST /v1/ocr, GET /v1/models, /healthz, /readyz and /metrics (Prometheus)."""
    from ocrloop.agent import ENGINES

    _workspace(workspace)
    if engine not in ENGINES:
        raise OcrloopError(f"--engine must be {' or '.join(ENGINES)}, not {engine!r}")
    config = _config(workspace, overrides)
    if engine == "tesseract":
        from ocrloop.evaluate.tesseract import tesseract_name

        tesseract_name()  # a missing Tesseract is one error line now, not a 503 on every request
    else:
        from ocrloop.models.loading import prepare_backend

        prepare_backend(config.training.backend)
    from ocrloop.serve.app import serve

    serve(config, engine=engine)


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("ocrloop-report.html"),
    workspace: WorkspaceOption = Path("."),
) -> None:
    """One self-contained HTML page: document mix, runs, CER/WER per version and category, duration, VRAM, cost."""
    from ocrloop.loop.report import write_report

    ws = _workspace(workspace)
    write_report(ws.config.registry_location, out)
    console.print(f"wrote {out}", markup=False)


def _print_report(report, title: str) -> None:
    table = Table(title=title)
    for column in ("group", "pages", "CER", "WER", "accuracy"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=column == "group")
    rows = [("overall", report.overall)]
    rows += [(f"category={k}", v) for k, v in sorted(report.by_category.items())]
    rows += [(f"business={k}", v) for k, v in sorted(report.by_business.items())]
    for name, metrics in rows:
        table.add_row(name, str(metrics.pages), f"{metrics.cer:.2%}", f"{metrics.wer:.2%}", f"{metrics.accuracy:.2%}")
    console.print(table)


def _print_comparison(rows, before_name: str, after_name: str) -> None:
    table = Table(title=f"before ({before_name}) -> after ({after_name})")
    for column in ("group", "pages", "CER before", "CER after", "change", "WER before", "WER after"):
        table.add_column(column, justify="left" if column == "group" else "right", no_wrap=column == "group")
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
