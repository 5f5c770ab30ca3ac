"""``ocrloop bench photo-loop``: a reader fine-tuned on phone photos of one business's documents through the real loop.

The reader (``--reader``: a folder, e.g. ``bench pretrain --save-model``'s, or a preset) becomes a fresh workspace's
base model; the workspace gets labelled phone photos (``data synth --style photo``) of one business; ``FineTuneLoop``
trains a challenger (LoRA by default) and promotes it only if it beats the reader on the test split. Then the reader
and the champion read held-out photos rendered from a seed the workspace never saw, beside Tesseract and a blind
control (the same texts on blank pages, read by the champion). The held-out photos are drawn in layouts the workspace's
documents never use (``--heldout-templates`` against ``--train-templates``); photos from the same seed in the
workspace's own layouts are read too, as pages nothing was chosen on (the loop's gate chose on its test split).
Everything goes to one JSON and a PNG per category.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.pretrain import NORMALIZED, score
from ocrloop.bench.scoring import add_tesseract, save_figure, score_tesseract
from ocrloop.bench.settings import BenchPhotoLoopSettings
from ocrloop.config import DataConfig, OcrloopConfig, apply_overrides
from ocrloop.data.dataset import Dataset
from ocrloop.data.lessons import blank_copy
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.errors import OcrloopError
from ocrloop.loop.history import loop_history
from ocrloop.loop.recipe import FineTuneLoop
from ocrloop.models import check_model, load_model, read_model_card
from ocrloop.models.reading import ReadingSettings
from ocrloop.registry import Registry
from ocrloop.registry.champions import serving_model
from ocrloop.workspace import init_workspace

TRAIN_SEED = 11  # the workspace's photos
HELDOUT_SEED = 9_000  # held-out photos: a seed the workspace's documents never use
# Processes rendering the held-out pages, whatever --render-processes says: documents rendered in processes depend on
# their number (``synth.render_in_processes``), and every run must read the same held-out pages (every loop before
# run 18's used 8).
HELDOUT_RENDER_PROCESSES = 8
# The pages read beside the held-out photos, by their key in the results (each read by the reader, the champion and
# Tesseract), and what they are.
OTHER_PAGE_SETS = {"unphotographed": "the same documents unphotographed",
                   "test_split": "the loop's test split (trained layouts)",
                   "heldout_trained_layouts": "held-out photos in the trained layouts"}


def bench_photo_loop(settings: BenchPhotoLoopSettings, console=None) -> dict[str, Any]:
    """Run the loop on photos from ``settings.reader`` and write ``settings.out`` and a PNG beside it."""
    started = time.perf_counter()
    log = (lambda line: console.print(line, markup=False)) if console else (lambda line: None)
    # A wrong --reader is said before minutes of rendering, and leaves no workspace; a preset or hub id keeps its name.
    folder = check_model(settings.reader)
    reader = str(folder.resolve()) if Path(settings.reader).exists() else settings.reader
    card = read_model_card(folder) or {}
    reading = ReadingSettings.from_json(card.get("reading")) or ReadingSettings()
    reading = dataclasses.replace(reading, **{k: v for k, v in (("resolution", settings.resolution),
                                                                ("max_new_tokens", settings.max_new_tokens)) if v is not None})
    overrides = {"training.max_steps": settings.steps, "training.batch_size": settings.batch_size,
                 "training.gradient_accumulation_steps": 1, "training.learning_rate": settings.learning_rate,
                 "training.lora_targets": settings.lora_targets, "training.eval_steps": max(1, settings.steps // settings.evals),
                 "training.read_batch_size": settings.read_batch_size, "training.backend": settings.backend,
                 "training.dataloader_workers": settings.workers,
                 "loop.min_test_pages": settings.min_test_pages,
                 # the challenger trains, and everything reads, at the reader's settings
                 "training.resolution": reading.resolution, "training.prompt": reading.prompt,
                 "training.max_new_tokens": reading.max_new_tokens}
    root = settings.work / "workspace"
    if root.exists():  # its settings and registry would be an earlier run's
        raise OcrloopError(f"{root} holds an earlier run's workspace: remove it, or give another --work")
    workspace, _ = init_workspace(root, apply_overrides(OcrloopConfig(base_model=reader), overrides))
    config = workspace.config
    log(f"rendering {settings.documents} photographed documents of a {settings.business} business")
    synthesize_dataset(config.dataset_dir, _photos(settings, settings.documents, TRAIN_SEED, settings.train_templates),
                       config.data, workers=settings.render_processes)
    heldout_root, blank_root = heldout_photos(settings, config.data)
    heldout = Dataset.open(heldout_root, config.data)
    unphotographed = Dataset.open(heldout_unphotographed(settings, config.data), config.data)
    in_trained_layouts = Dataset.open(heldout_photos_in_trained_layouts(settings, config.data), config.data)
    photos = Dataset.open(config.dataset_dir, config.data)
    trained_texts = {e.text for e in photos.examples()}
    overlap = sum(e.text in trained_texts for e in (*heldout.examples(), *in_trained_layouts.examples()))

    log("running the loop (train a challenger, judge it against the reader, promote it only if it is better)")
    loop = FineTuneLoop(workspace, console=console).run()
    with Registry(config.registry_location) as registry:
        champion = serving_model(registry, config.base_model, None)
    history = loop_history(config.registry_location)

    results: dict[str, Any] = {
        "command": " ".join(["ocrloop bench photo-loop", *sys.argv[3:]]),
        "workload": {"reader": reader, "business": settings.business, "categories": list(settings.categories),
                     "documents": settings.documents, "train_seed": TRAIN_SEED, "heldout_documents": settings.heldout,
                     "heldout_pages": len(heldout.examples()),
                     "heldout_seed": HELDOUT_SEED, "heldout_texts_also_in_training": overlap,
                     "train_templates": list(settings.train_templates), "heldout_templates": list(settings.heldout_templates),
                     "scale": settings.scale, "render_processes": settings.render_processes,
                     "heldout_render_processes": HELDOUT_RENDER_PROCESSES,
                     "reading": dataclasses.asdict(reading),
                     "normalized": NORMALIZED},
        "loop": {"ran": loop.ran, "promoted": loop.promoted, "reason": loop.reason, "champion": champion.name,
                 "champion_is_the_reader": champion.key == "base", "history": history},
    }
    log("reading the held-out photos, the same documents unphotographed, the loop's test split and held-out photos in "
        "the trained layouts with the reader, the champion and Tesseract, and the held-out photos' blank twins with the "
        "champion")
    # Beside the held-out photos, the loop's own test split (documents never trained on, in the layouts the workspace
    # trains on; the loop judged on these, markup counted), held-out photos in those layouts (the same, but nothing was
    # chosen on them) and the held-out documents unphotographed (what the photo costs, apart from what the unseen
    # layout does), each read by the reader, the champion and Tesseract.
    page_sets = {"heldout": (heldout, None), "test_split": (photos, "test"),
                 "heldout_trained_layouts": (in_trained_layouts, None), "unphotographed": (unphotographed, None)}

    def read_every_set(model: Any) -> dict[str, Any]:
        # the held-out photos' reads all kept: which words of the unseen layout get written (bench/layout_words.py)
        return {name: score(model, pages, reading, settings.read_batch_size, split=split, every_read=name == "heldout")
                for name, (pages, split) in page_sets.items()}

    model = load_model(reader, backend=config.training.backend)
    by_reader = by_champion = read_every_set(model)
    if champion.key != "base":  # else nothing was promoted: the reader is the champion, already read
        model = load_model(champion.path, backend=config.training.backend)
        by_champion = read_every_set(model)
    results["reader"], results["champion"] = by_reader["heldout"], by_champion["heldout"]
    results["blind_control"] = score(model, Dataset.open(blank_root, config.data), reading, batch_size=settings.read_batch_size)
    results["tesseract"] = score_tesseract(heldout)
    for name, (pages, split) in page_sets.items():
        if name != "heldout":
            results[name] = {"reader": by_reader[name], "champion": by_champion[name],
                             "tesseract": score_tesseract(pages, split=split)}
    results.update({"host": platform.node(), "total_seconds": time.perf_counter() - started})
    atomic_write_json(settings.out, results)
    plot_photo_loop(results, settings.out.with_suffix(".png"))
    return results


def _photos(settings: BenchPhotoLoopSettings, n: int, seed: int, templates: list[int], **options) -> SynthOptions:
    """Photographed documents of the settings' business and categories."""
    return SynthOptions(n=n, seed=seed, templates=tuple(templates), categories=tuple(settings.categories),
                        businesses=(settings.business,), style="photo", scale=settings.scale, **options)


def _rendered_once(settings: BenchPhotoLoopSettings, kind: str, n: int, seed: int, templates: list[int],
                   data: DataConfig, processes: int, **options) -> Path:
    """``n`` photographed documents (``_photos``) rendered by ``processes`` under ``settings.work`` in a folder named
    for everything that decides them, once: later runs with the same settings reuse them."""
    root = settings.work / (f"{kind}-{settings.business}-{'-'.join(settings.categories)}-{settings.scale}-{n}"
                            f"-rendered-by-{processes}-templates-{'-'.join(map(str, templates))}")
    if not (root / "annotations.json").is_file():
        synthesize_dataset(root, _photos(settings, n, seed, templates, **options), data, workers=processes)
    return root


def heldout_photos(settings: BenchPhotoLoopSettings, data: DataConfig,
                   processes: int = HELDOUT_RENDER_PROCESSES) -> tuple[Path, Path]:
    """The held-out photos (a seed and layouts the workspace never sees) and their blank twins; ``processes``: only to
    render again those of a result made when they were rendered by another number."""
    root = _rendered_once(settings, "heldout-photos", settings.heldout, HELDOUT_SEED, settings.heldout_templates, data,
                          processes, split_fractions=(1.0, 0.0, 0.0))
    blank = root.with_name(f"{root.name}-blank")
    if not (blank / "annotations.json").is_file():
        blank_copy(blank, root, data)
    return root, blank


def heldout_photos_in_trained_layouts(settings: BenchPhotoLoopSettings, data: DataConfig,
                                      processes: int = HELDOUT_RENDER_PROCESSES) -> Path:
    """Held-out photos from the held-out seed in the workspace's own layouts: new documents of the business, as the
    loop's test split is, but read only to be reported."""
    return _rendered_once(settings, "heldout-photos", settings.heldout, HELDOUT_SEED, settings.train_templates, data,
                          processes, split_fractions=(1.0, 0.0, 0.0))


def heldout_unphotographed(settings: BenchPhotoLoopSettings, data: DataConfig,
                           processes: int = HELDOUT_RENDER_PROCESSES) -> Path:
    """The held-out documents before their photo: the same texts, layouts and fonts as ``heldout_photos``' pages, as
    clean flat pages."""
    return _rendered_once(settings, "heldout-unphotographed", settings.heldout, HELDOUT_SEED, settings.heldout_templates,
                          data, processes, split_fractions=(1.0, 0.0, 0.0), photographed=False)


def as_rendered(settings: BenchPhotoLoopSettings, workload: dict[str, Any]) -> BenchPhotoLoopSettings:
    """``settings`` with the documents a result's ``workload`` rendered: its pages can be rendered again to be read
    by another engine or analysed."""
    # results written before the workload recorded a field were rendered with its default
    return settings.model_copy(update={
        "business": workload["business"], "categories": workload["categories"], "documents": workload["documents"],
        "heldout": workload.get("heldout_documents", workload["heldout_pages"]),
        "train_templates": workload["train_templates"], "heldout_templates": workload["heldout_templates"],
        "scale": workload.get("scale", settings.scale),
        "render_processes": workload.get("render_processes", settings.render_processes)})


def heldout_processes(workload: dict[str, Any]) -> int:
    """The processes that rendered a result's held-out pages."""
    # results made before the held-out pages had their own number were rendered by --render-processes (default 8)
    return workload.get("heldout_render_processes", workload.get("render_processes", HELDOUT_RENDER_PROCESSES))


def add_tesseract_photos(settings: BenchPhotoLoopSettings) -> dict[str, Any]:
    """Score Tesseract into ``settings.out`` (``scoring.add_tesseract``): the held-out photos are rendered again with
    the result's workload and checked against the texts the reader read; the held-out documents unphotographed, where
    the result read them; the workspace's photos too, for the loop's test split, checked against the split's documents
    per category; and the held-out photos in the trained layouts, where the result read them."""

    def heldout(workload: dict[str, Any]) -> Dataset:
        root, _ = heldout_photos(as_rendered(settings, workload), DataConfig(), heldout_processes(workload))
        return Dataset.open(root, DataConfig())

    def other_sets(results: dict[str, Any]) -> None:
        rendered = as_rendered(settings, results["workload"])
        for key, render in (("unphotographed", heldout_unphotographed),
                            ("heldout_trained_layouts", heldout_photos_in_trained_layouts)):
            if key in results:
                results[key]["tesseract"] = score_tesseract(Dataset.open(
                    render(rendered, DataConfig(), heldout_processes(results["workload"])), DataConfig()))
        root = _rendered_once(rendered, "workspace-photos", rendered.documents, TRAIN_SEED, rendered.train_templates,
                              DataConfig(), rendered.render_processes)
        photos = Dataset.open(root, DataConfig())
        mix = sorted((entry["category"], entry["pages"]) for entry in results["loop"]["history"][0]["mix"]
                     if entry["split"] == "test")
        if sorted(Counter(e.category for e in photos.examples("test")).items()) != mix:
            raise OcrloopError(f"the workspace's photos rendered here split otherwise than {settings.out}'s; Tesseract "
                               "would read another test split")
        results.setdefault("test_split", {})["tesseract"] = score_tesseract(photos, split="test")

    return add_tesseract(settings.out, "bench photo-loop", heldout, plot_photo_loop, read="reader", also=other_sets)


def plot_photo_loop(results: dict[str, Any], png: Path) -> Path:
    """Held-out CER (markup ignored) per category and overall: the reader, the loop's champion, Tesseract, and the
    champion on blank pages; and the same readers on the held-out documents unphotographed, on the loop's test split
    and on held-out photos in the trained layouts, where the result has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    readers = [("reader", "the reader (before)"), ("champion", "the loop's champion (after)"),
               ("tesseract", "Tesseract"), ("blind_control", "champion, blank pages")]
    present = [(key, label) for key, label in readers if "strip_markdown" in results.get(key, {})]
    categories = sorted(results[present[0][0]]["strip_markdown"]["by_category"]) if present else []
    others = [(results[key], textwrap.fill(label, 18)) for key, label in OTHER_PAGE_SETS.items() if results.get(key)]
    groups = ["overall", *categories, *(label for _, label in others)]
    fig, ax = plt.subplots(figsize=(10, 4.4))
    width = 0.8 / max(1, len(present))
    for offset, (key, label) in enumerate(present):
        scores = results[key]["strip_markdown"]
        values = [scores["cer"], *(scores["by_category"].get(c, {}).get("cer", np.nan) for c in categories)]
        values += [other.get(key, {}).get("strip_markdown", {}).get("cer", np.nan) for other, _ in others]
        ax.bar(np.arange(len(groups)) + offset * width, values, width, label=label)
    ax.set_xticks(np.arange(len(groups)) + width * (len(present) - 1) / 2, groups)
    ax.set_ylabel("held-out CER (markup ignored)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=7, loc="upper right")
    workload = results["workload"]
    ax.set_title(f"{workload['documents']} photographed {workload['business']} documents through the loop: "
                 f"{workload['heldout_pages']} held-out photos", fontsize=10)
    return save_figure(fig, png)
