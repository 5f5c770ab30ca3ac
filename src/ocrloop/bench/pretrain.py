"""``ocrloop bench pretrain``: train a base reader from scratch through the training engine, and show it reads.

A ``small`` Qwen2.5-VL (random weights, the project's own tokenizer) learns from a curriculum of reading lessons
(``data.lessons``): large glyphs, single lines, blocks of lines, then whole receipts and invoices, each stage a full
fine-tuning run (``train.finetune.FineTuner``) that starts from the stage before. Every stage is scored on
validation lessons of its kind while it trains (the pages stage on clean pages), and the blocks and pages stages end
with a read of the held-out test pages: clean receipts and invoices from another seed never trained on, read only to
be reported. The later stages' lessons, then the test pages, are rendered in the background while the earlier
stages train. Beside the final read stand two controls on the same pages: the same texts on blank images (a model
that scores well there guesses, it does not read) and Tesseract. Everything goes to one JSON and a PNG of the
curves.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.config import DataConfig, OcrloopConfig, TrainingConfig
from ocrloop.data.dataset import Dataset
from ocrloop.bench.scoring import add_tesseract, save_figure, score_tesseract, scored
from ocrloop.bench.settings import BenchPretrainSettings
from ocrloop.data.lessons import LESSONS, LessonOptions, blank_copy, synthesize_lessons
from ocrloop.evaluate.evaluator import evaluate_model
from ocrloop.models import FAMILIES
from ocrloop.models.feature_cache import FOLDER as FEATURE_CACHE_FOLDER
from ocrloop.models.reading import ReadingSettings

HELDOUT_SEED = 7_000  # lesson seeds of the stages are 1 to 4; the test pages use this one, validation lessons the next 4
NORMALIZED = "runs of whitespace count as one space and text is NFKC-normalized; strip_markdown also drops markup " \
             "(**, #, list dashes, table bars and rules); case is kept"


def score(bundle, dataset: Dataset, reading: ReadingSettings, batch_size: int, split: str | None = None,
          limit: int | None = None, first: int | None = None, every_read: bool = False) -> dict[str, Any]:
    """Read every page of ``dataset`` (of ``split``, if given; the first ``limit`` alone, if given); pooled CER, mean
    and median page CER and NED, overall and per category, under each normalization, and the same for the ``first``
    pages alone (``first_pages``) where fewer than all. Keeps the first three reads (``examples``), the three that
    read worst with markup ignored (``worst``: a few pages decide a pooled CER over 64) and, with ``every_read``, all
    of them in page order (``reads``: what went wrong where, without a GPU)."""
    started = time.perf_counter()
    evaluation = evaluate_model(bundle, dataset, dataset.examples(split)[:limit], reading, batch_size=batch_size)
    results = scored(evaluation.examples, evaluation.predictions)
    if first is not None and first < len(evaluation.examples):
        results["first_pages"] = scored(evaluation.examples[:first], evaluation.predictions[:first])
    results["seconds"] = time.perf_counter() - started
    reads = [{"reference": e.text, "read": text} for e, text in zip(evaluation.examples, evaluation.predictions)]
    results["examples"] = reads[:3]
    page_cers = results["strip_markdown"]["page_cers"]
    results["worst"] = [{"page": page, "cer": page_cers[page], **reads[page]}
                        for page in sorted(range(len(reads)), key=lambda page: -page_cers[page])[:3]]
    if every_read:
        results["reads"] = reads
    return results


def heldout_pages(work: Path, pages: int, categories: tuple[str, ...], data: DataConfig) -> tuple[Path, Path]:
    """The held-out test pages (clean receipts and invoices, seed never trained on) and their blank twins."""
    root, blank = work / f"heldout-pages-{pages}", work / f"heldout-pages-{pages}-blank"
    if not (root / "annotations.json").is_file():
        synthesize_lessons(root, LessonOptions("pages", pages, seed=HELDOUT_SEED, categories=categories, noise=0.0), data)
    if not (blank / "annotations.json").is_file():
        blank_copy(blank, root, data)
    return root, blank


def unseen_layout_pages(work: Path, checkpoint: Path, count: int, data: DataConfig) -> tuple[Path, Path]:
    """``count`` of ``bench photo-loop``'s held-out documents, at its defaults otherwise (an ``ecommerce`` business in
    a layout no lesson uses, a seed no lesson uses), rendered under ``work``, as phone photos and as clean flat pages:
    at 64, the very pages its reader, champion and Tesseract are scored on."""
    from ocrloop.bench.photo_loop import heldout_photos, heldout_unphotographed
    from ocrloop.bench.settings import BenchPhotoLoopSettings

    settings = BenchPhotoLoopSettings(out=work / "unused.json", reader=str(checkpoint), heldout=count, work=work)
    photos, _ = heldout_photos(settings, data)
    return photos, heldout_unphotographed(settings, data)


def render_test_sets(work: Path, checkpoint: Path, test_pages: int, heldout: int, categories: tuple[str, ...],
                     data: DataConfig, unseen_layout: bool) -> tuple[tuple[Path, Path], tuple[Path, Path] | None]:
    """Render what is read only to be reported: the test pages with their blank twins (``heldout_pages``) and, where
    asked, ``heldout`` of the unseen layout's documents as photos and as clean pages (``unseen_layout_pages``)."""
    return (heldout_pages(work, test_pages, categories, data),
            unseen_layout_pages(work, checkpoint, heldout, data) if unseen_layout else None)


# Lesson options a folder's suffix leaves out: the kind and count begin its name, the seed follows the stage, and
# categories, noise and scale have never been part of it.
_NAMED_ELSEWHERE = ("kind", "n", "seed", "categories", "noise", "scale")


def _lesson_folder_suffix(options: LessonOptions) -> str:
    """What sets ``options``' lessons apart from plain ones, for their folder's name: every other lesson option away
    from its default, in the order ``LessonOptions`` declares them, so lessons of other settings (a new option's too)
    are never reused for these."""
    suffix = ""
    for field in dataclasses.fields(LessonOptions):
        value = getattr(options, field.name)
        if field.name not in _NAMED_ELSEWHERE and value != field.default:
            shown = "-".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}"
            suffix += f"-{field.name.replace('_', '-')}-{shown}"
    return suffix


def lessons_ready(root: Path, options: LessonOptions, data: DataConfig, processes: int) -> Dataset:
    """The lessons at ``root``: found there, opened with every file inspected; otherwise rendered, with the
    inspection that adding them did (a second pass over 180,000 lines would keep training waiting)."""
    if (root / "annotations.json").is_file():
        return Dataset.open(root, data)
    added = synthesize_lessons(root, options, data, processes)
    return Dataset(root, data, added.added, added.files, [])


def stage_training(steps: int, batch_size: int, learning_rate: float, max_new_tokens: int, *, resolution: str,
                   eval_steps: int, heldout: int, workers: int, logging_steps: int,
                   stop_at: float | None = None, max_seconds: float | None = None,
                   profile_steps: int = 0, group_by_length: bool = False) -> TrainingConfig:
    """How one stage of the curriculum trains: every weight in float32 on the hf backend, warm-up then linear decay,
    reading up to ``heldout`` validation lessons every ``eval_steps`` (ending at the first at or below ``stop_at``), its
    steps cut to what fits in ``max_seconds``, ``profile_steps`` from its middle profiled, its batches grouped by
    length when asked."""
    import torch

    return TrainingConfig(mode="full", max_steps=steps, batch_size=batch_size, gradient_accumulation_steps=1,
                          learning_rate=learning_rate, warmup_steps=min(100, steps // 10), weight_decay=0.01,
                          resolution=resolution, prompt="ocr", max_new_tokens=max_new_tokens, eval_steps=eval_steps,
                          stop_at_validation_cer=stop_at, eval_max_pages=heldout, read_batch_size=64, save_steps=10**9,
                          logging_steps=logging_steps, backend="hf",
                          optimizer="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
                          gradient_checkpointing=False, feature_cache=False, dataloader_workers=workers,
                          float32_weights=True, max_train_seconds=max_seconds, profile_steps=profile_steps,
                          group_by_length=group_by_length)


def _yield_the_cpu() -> None:
    # Rendering shares the machine with the data loader that feeds the GPU: the loader goes first.
    os.nice(10)


def bench_pretrain(settings: BenchPretrainSettings, console=None) -> dict[str, Any]:
    """Run the curriculum (one FineTuner run per stage: glyphs, lines, blocks, pages) and write ``settings.out`` and a PNG
    beside it."""
    from ocrloop.train.finetune import FineTuner

    started = time.perf_counter()
    # The stages trained, in order: a stage of no steps (blocks alone may have none) is skipped, lessons and all.
    stages = tuple(stage for stage, stage_steps in zip(LESSONS, settings.steps) if stage_steps)
    out, size, work, heldout, resolution = settings.out, settings.size, settings.work, settings.heldout, settings.resolution
    test_pages = settings.test_pages or heldout
    lessons, steps, batch_sizes = settings.lessons, settings.steps, settings.batch_sizes
    learning_rates, max_new_tokens, workers = settings.learning_rates, settings.max_new_tokens, settings.workers
    categories = tuple(settings.categories)
    data = DataConfig()
    log = (lambda line: console.print(line, markup=False)) if console else (lambda line: None)

    # When each part of the set-up before the first step ended: where the minute before training goes.
    marks = [("started", time.perf_counter())]
    checkpoint = work / "checkpoints" / f"qwen2.5-vl-{size}"
    if not (checkpoint / "config.json").is_file():
        FAMILIES["qwen2.5-vl"]().build_random(checkpoint, size=size)
    marks.append(("random_checkpoint", time.perf_counter()))
    # What the settings change in each stage's lessons: blocks and pages only (photos: pages only; line sizes: lines).
    varied = {"scrambled": settings.scrambled, "templates": tuple(settings.templates),
              "random_layouts": settings.random_layouts, "mixed_names": settings.mixed_names,
              "random_labels": settings.random_labels}
    # Seeds and settings follow a stage's place in LESSONS, so a skipped stage changes no other stage's lessons.
    place = {stage: LESSONS.index(stage) for stage in stages}
    options = {stage: LessonOptions(stage, lessons[place[stage]], seed=place[stage] + 1, categories=categories,
                                    **(varied if stage in ("blocks", "pages") else {}),
                                    **({"line_sizes": tuple(settings.line_sizes)} if stage == "lines" else {}),
                                    **({"photos": settings.photos} if stage == "pages" else {}))
               for stage in stages}
    stage_data, stage_validation = {}, {}
    for stage in stages:
        stage_data[stage] = work / f"{stage}-{lessons[place[stage]]}{_lesson_folder_suffix(options[stage])}"
        # Each stage validates on lessons of its own kind from a seed no stage trains on; the pages stage on clean pages,
        # as the test pages are, but never on the test pages themselves: those are read only to be reported.
        stage_validation[stage] = work / f"validation-{stage}-{heldout}"
        if not (stage_validation[stage] / "annotations.json").is_file():
            validation_options = LessonOptions(stage, heldout, seed=HELDOUT_SEED + place[stage] + 1, categories=categories,
                                               **({"noise": 0.0} if stage == "pages" else {}))
            synthesize_lessons(stage_validation[stage], validation_options, data)
    marks.append(("validation_lessons", time.perf_counter()))
    for stage in LESSONS:
        if stage not in stages:
            log(f"stage {stage}: skipped (0 steps)")
    for stage in stages:
        if not (stage_data[stage] / "annotations.json").is_file():
            log(f"rendering {options[stage].n} {stage} lessons" + (" in the background" if stage != stages[0] else ""))
    # The later stages' lessons are rendered and opened (inspecting 60 k lessons takes half a minute) in one process of
    # lower priority, each stage waiting for its own lessons only: in a thread here they held the GIL and the CPUs
    # that the training loop and its loader needed, and the glyph stage trained a third slower. It starts before the
    # first stage's lessons are rendered here, at normal priority: started after them, the lines were not ready when
    # the glyphs were read (the GPU waited 12-36 s in runs 10 to 12).
    background = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver"),
                                     initializer=_yield_the_cpu)
    rendered = {stage: background.submit(lessons_ready, stage_data[stage], options[stage], data, settings.render_processes)
                for stage in stages[1:]}
    # The test pages and the unseen layout are read only after the blocks stage: rendered last, in the background,
    # they take nothing from the training's time (17 s before the first step in run 27).
    tests_rendered = background.submit(render_test_sets, work, checkpoint, test_pages, heldout, categories, data,
                                       settings.reads_unseen_layout)
    background.shutdown(wait=False)
    # When each stage's lessons (and the test sets) were ready: the slack between that and the stage's start says how
    # many more lessons the background could have rendered without keeping the GPU waiting.
    ready_at: dict[str, float] = {}
    for stage, future in [*rendered.items(), ("test_sets", tests_rendered)]:
        future.add_done_callback(lambda _, stage=stage: ready_at.setdefault(stage, time.perf_counter()))
    base, samples_before, carried = str(checkpoint), 0, 0
    results: dict[str, Any] = {"command": "ocrloop bench pretrain " + " ".join(sys.argv[3:]), "stages": []}
    reading = ReadingSettings(resolution=resolution, prompt="ocr", max_new_tokens=max_new_tokens[-1])  # of pages
    @functools.cache
    def test_sets() -> tuple[Dataset, Dataset, tuple[Dataset, Dataset] | None]:
        """The test pages, their blank twins and the unseen layout (as photos, as clean pages), opened when first
        read; waits for their rendering, and raises what it raised."""
        (pages_root, blank_root), unseen = tests_rendered.result()
        ready_at.setdefault("test_sets", time.perf_counter())
        results["test_sets_ready_seconds"] = ready_at["test_sets"] - started
        return (Dataset.open(pages_root, data), Dataset.open(blank_root, data),
                unseen and (Dataset.open(unseen[0], data), Dataset.open(unseen[1], data)))

    def write_partial(extra: dict[str, Any] | None = None) -> None:
        atomic_write_json(out, {**results, **(extra or {}), "complete": False,
                                "seconds_so_far": time.perf_counter() - started})
    try:
        first_lessons = lessons_ready(stage_data[stages[0]], options[stages[0]], data, settings.render_processes)
        marks.append((f"{stages[0]}_lessons", time.perf_counter()))
        setup_seconds = {name: at - marks[index][1] for index, (name, at) in enumerate(marks[1:])}
        for stage in stages:
            count, stage_steps, batch, rate, new_tokens = (values[place[stage]] for values in (
                lessons, steps, batch_sizes, learning_rates, max_new_tokens))
            stage_started = time.perf_counter()
            last = stage == stages[-1]
            lessons_of_stage = rendered[stage].result() if stage in rendered else first_lessons  # raises what rendering raised
            # The first stage's lessons were rendered here just now; a later stage's result() may return before its
            # done callback has run.
            ready_at.setdefault(stage, time.perf_counter())
            waited = time.perf_counter() - stage_started
            # Written now, not only when the stage ends: a run stopped within the stage still says when it began and
            # how long it waited for its lessons.
            timing = {"waited_for_lessons_seconds": waited, "lessons_ready_seconds": ready_at[stage] - started,
                      "stage_started_seconds": stage_started - started}
            write_partial({"running": {"stage": stage, **timing}})
            validation = Dataset.open(stage_validation[stage], data)
            stage_steps += carried
            # The glyph stage reads its validation glyphs often enough to end soon after it leaves its plateau.
            stop_at = settings.glyphs_read_at if stage == "glyphs" else None
            evals = 10 if stop_at is not None else settings.evals_per_stage
            # The last stage trains in what the budget leaves; the ones before are not cut (their readers are only
            # steps on the way, and time they take is time the pages stage loses).
            max_seconds = None
            if settings.time_budget is not None and last:
                left = settings.time_budget - (time.perf_counter() - started) - settings.time_reserve
                max_seconds = max(left, 0.001)  # nothing left: it stops at its first cut, a tenth of its steps
                log(f"stage {stage}: {left:.0f} s of the {settings.time_budget:.0f} s budget left for its steps")
            training = stage_training(stage_steps, batch, rate, new_tokens, resolution=resolution,
                                      eval_steps=max(1, stage_steps // evals), heldout=heldout, workers=workers,
                                      logging_steps=max(1, stage_steps // 20), stop_at=stop_at, max_seconds=max_seconds,
                                      profile_steps=settings.profile_steps if last else 0,
                                      group_by_length=settings.group_by_length and stage == "pages")
            config = OcrloopConfig(base_model=base, dataset_dir=stage_data[stage], registry_path=work / "ocrloop.db",
                                   models_dir=work / "models", training=training, data=data)
            output = work / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{stage}"
            log(f"stage {stage}: {stage_steps} steps of {batch} from {Path(base).name}")
            tuner = FineTuner(config, output, validation=(validation, validation.examples()), console=console,
                              dataset=lessons_of_stage)
            try:
                tuner.setup()
                card = tuner.run().card
                # Saved before the final reads, so that a run stopped during them still leaves its reader.
                if last and settings.save_model is not None:
                    copy_as_bfloat16(output, settings.save_model)
                    results["saved_model"] = str(settings.save_model)
                # Neither a glyph nor a line reader writes a page (lines read pages at 96.7–98.2 % in runs 7 to 9b):
                # reading 64 pages to the token limit after them would only cost time. After blocks, the first
                # --heldout test pages alone (its reader writes long); at the end, every test page, and the first
                # --heldout apart: the pages that runs with fewer test pages read.
                after = None
                if stage not in ("glyphs", "lines"):
                    pages, blank, unseen_layout = test_sets()
                    after = score(tuner.bundle, pages, reading, batch_size=64, limit=None if last else heldout,
                                  first=heldout, every_read=last)
                if last:
                    results["heldout_pages"] = after
                    results["blind_control"] = score(tuner.bundle, blank, reading, batch_size=64)
                    if unseen_layout is not None:
                        # every read kept: which words of a layout it never saw the reader writes
                        # (bench/layout_words.py)
                        results["heldout_photos"] = score(tuner.bundle, unseen_layout[0], reading, batch_size=64,
                                                          every_read=True)
                        results["heldout_unseen_layout"] = score(tuner.bundle, unseen_layout[1], reading,
                                                                 batch_size=64, every_read=True)
            finally:
                tuner.cleanup()
            speed = card["speed"]
            done = speed["steps"]
            validations = card["metrics"]["validation"]
            following = stages.index(stage) + 1
            carried = (stage_steps - done) * batch // batch_sizes[place[stages[following]]] if following < len(stages) else 0
            results["stages"].append({
                "stage": stage, "lessons": count, "steps": done, "max_steps": stage_steps, "batch_size": batch,
                "learning_rate": rate,
                "samples_before": samples_before,
                "curve": [{"step": v["step"], "samples": samples_before + v["step"] * batch, "cer": v["cer"],
                           **{key: v[key] for key in ("seconds", "read_characters", "reference_characters")}}
                          for v in validations],
                "loss_by_step": card["metrics"]["loss_by_step"],
                "page_check_seconds": speed["prepare_seconds"], "train_seconds": speed["train_seconds"],
                "validation_seconds": sum(v["seconds"] for v in validations),
                "steady_samples_per_second": speed.get("steady_samples_per_second"),
                "time_budget": speed.get("time_budget"), "profile": speed.get("profile"),
                "stage_seconds": time.perf_counter() - stage_started, **timing,
                "heldout_pages_after": after and {"cer": after["strip_markdown"]["cer"], "plain_cer": after["plain"]["cer"]},
            })
            log(f"stage {stage}: validation {stage} CER {validations[-1]['cer']:.2%}"
                + (f", held-out pages CER {after['strip_markdown']['cer']:.2%} (markup ignored)" if after else ""))
            if carried:
                log(f"stage {stage}: read at or below {settings.glyphs_read_at:.0%} after {done} of {stage_steps} steps; "
                    f"{carried} more steps for {stages[following]}")
            samples_before += done * batch
            base = str(output)
            results["parameters"] = card["parameters"]["total"]
            results["device"], results["versions"] = card["device"], card["versions"]
            write_partial()
    except BaseException:  # the later stages' lessons are not needed any more
        background.shutdown(wait=False, cancel_futures=True)
        raise

    results["tesseract"] = score_tesseract(test_sets()[0])
    total = time.perf_counter() - started
    results.update({
        "workload": {"family": "qwen2.5-vl", "size": size, "resolution": resolution, "prompt": "ocr",
                     "categories": list(categories), "heldout_pages": test_pages, "heldout_seed": HELDOUT_SEED,
                     "scrambled": settings.scrambled, "photos": settings.photos, "templates": list(settings.templates),
                     "random_layouts": settings.random_layouts, "mixed_names": settings.mixed_names,
                     "random_labels": settings.random_labels,
                     "line_sizes": settings.line_sizes,
                     "group_by_length": settings.group_by_length,
                     "training_samples": samples_before, "normalized": NORMALIZED},
        "host": platform.node(), "synth_seconds": marks[-1][1] - marks[0][1], "setup_seconds": setup_seconds,
        "total_seconds": total, "model": base,
    })
    atomic_write_json(out, results)
    plot_pretrain(results, out.with_suffix(".png"))
    return results


def copy_as_bfloat16(model: Path, destination: Path) -> None:
    """Copy a saved model with its float weights in bfloat16 (half the bytes; how it is read on a GPU anyway).
    The copy is written beside ``destination`` and renamed into place: a run stopped meanwhile leaves no half model."""
    import torch
    from safetensors.torch import load_file, save_file

    partial = destination.with_name(f".{destination.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(model, partial, ignore=shutil.ignore_patterns("checkpoints", FEATURE_CACHE_FOLDER, "*.safetensors"))
    for weights in model.glob("*.safetensors"):
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(partial / weights.name), metadata={"format": "pt"})
    if destination.exists():
        shutil.rmtree(destination)
    partial.rename(destination)


def add_tesseract_pages(out: Path, work: Path = Path("/tmp/ocrloop-pretrain")) -> dict[str, Any]:
    """Score Tesseract into an existing result (``scoring.add_tesseract``): the held-out pages are rendered again
    from their seed and checked against the texts the final read kept."""

    def heldout(workload: dict[str, Any]) -> Dataset:
        root, _ = heldout_pages(work, workload["heldout_pages"], tuple(workload["categories"]), DataConfig())
        return Dataset.open(root, DataConfig())

    return add_tesseract(out, "bench pretrain", heldout, plot_pretrain, read="heldout_pages")


def plot_pretrain(results: dict[str, Any], png: Path) -> Path:
    """Validation CER of each stage's lessons against training samples, the held-out pages after the stages that read
    them, and the controls (blank images, Tesseract) on the same pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for stage in results["stages"]:
        curve = stage["curve"]
        ax.plot([p["samples"] for p in curve], [p["cer"] for p in curve], marker=".",
                label=f"validation {stage['stage']} (markup counted)")
    ends = [(s["samples_before"] + s["steps"] * s["batch_size"], s["heldout_pages_after"]["cer"])
            for s in results["stages"] if s["heldout_pages_after"]]
    ax.plot([x for x, _ in ends], [y for _, y in ends], marker="s", color="black", label="held-out pages (after the stage)")
    unseen = [("heldout_photos", "held-out phone photos", "^", "tab:red"),
              ("heldout_unseen_layout", "the same documents, clean", "v", "tab:purple")]
    for key, label, marker, color in unseen:
        if key in results and ends:
            level = results[key]["strip_markdown"]["cer"]
            ax.plot([ends[-1][0]], [level], marker=marker, linestyle="none", color=color,
                    label=f"{label}, unseen layout ({level:.1%}, markup ignored)")
    controls = [("blind_control", "same texts on blank images", ":"), ("tesseract", "Tesseract", "--")]
    for key, label, style in controls:
        scored = results.get(key, {})
        if "strip_markdown" in scored:
            level = scored["strip_markdown"]["cer"]
            ax.axhline(level, linestyle=style, color="grey", label=f"{label}, pages ({level:.1%})")
    ax.axhline(0.03, linestyle="-", color="green", alpha=0.4, label="target 3 %")
    ax.set_xlabel("training samples")
    ax.set_ylabel("held-out CER (markup ignored on pages)")
    levels = [results[key]["strip_markdown"]["cer"] for key, _, _ in controls if "strip_markdown" in results.get(key, {})]
    levels += [results[key]["strip_markdown"]["cer"] for key, *_ in unseen if key in results]
    highest = max([0.2] + [p["cer"] for s in results["stages"] for p in s["curve"]] + [y for _, y in ends] + levels)
    ax.set_ylim(0, min(1.25, highest * 1.05))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=7)
    workload = results["workload"]
    final = results["heldout_pages"]["strip_markdown"]["cer"]
    ax.set_title(f"qwen2.5-vl {workload['size']} ({results.get('parameters', 0) / 1e6:.1f} M) from scratch in "
                 f"{results['total_seconds'] / 60:.1f} min: held-out pages {final:.1%} CER", fontsize=10)
    return save_figure(fig, png)
