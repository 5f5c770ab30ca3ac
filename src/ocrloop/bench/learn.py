"""``ocrloop bench learn``: does training make OCR better? A learning curve against Tesseract.

A ``small`` model (the family's architecture scaled down, random weights) is trained from scratch
on thousands of synthetic pages. Held-out pages come from another seed, so no page, and no random
draw of its content, was seen in training. Every ``eval_steps`` the model reads the held-out pages
and CER/WER are recorded, overall and per category. Tesseract reads the same pages through the same
evaluation code. The curve goes to JSON and a PNG.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.scoring import add_tesseract, report_scores, save_figure, score_tesseract
from ocrloop.config import DataConfig, OcrloopConfig, TrainingConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.evaluate.evaluator import evaluate_model
from ocrloop.evaluate.metrics import Normalization
from ocrloop.models import FAMILIES
from ocrloop.models.reading import ReadingSettings


def bench_learn(out: Path, *, family: str = "qwen2.5-vl", size: str = "small", train_documents: int = 2000,
                heldout_documents: int = 64, categories: tuple[str, ...] = ("receipt", "invoice"), steps: int = 3000,
                eval_steps: int = 500, batch_size: int = 16, learning_rate: float = 1e-3, resolution: str = "small",
                scale: float = 0.6, max_new_tokens: int = 384, workers: int = 8,
                work: Path = Path("/tmp/ocrloop-learn"), console=None) -> dict[str, Any]:
    """Train ``size`` from scratch, score the held-out pages every ``eval_steps``; write ``out`` (JSON) and a PNG beside it."""
    from ocrloop.train.finetune import FineTuner

    started = time.perf_counter()
    data = DataConfig()
    train_root, heldout_root = work / f"train-{train_documents}", work / f"heldout-{heldout_documents}"
    if not (train_root / "annotations.json").is_file():
        synthesize_dataset(train_root, SynthOptions(n=train_documents, seed=1, categories=categories, scale=scale,
                                                    split_fractions=(1.0, 0.0, 0.0)), data, workers=workers)
    if not (heldout_root / "annotations.json").is_file():
        synthesize_dataset(heldout_root, SynthOptions(n=heldout_documents, seed=2, categories=categories, scale=scale), data)
    heldout = Dataset.open(heldout_root, data)
    heldout_examples = [e for split in ("train", "val", "test") for e in heldout.examples(split)]
    synth_seconds = time.perf_counter() - started

    checkpoint = work / "checkpoints" / f"{family}-{size}"
    if not (checkpoint / "config.json").is_file():
        FAMILIES[family]().build_random(checkpoint, size=size)
    training = TrainingConfig(mode="full", max_steps=steps, batch_size=batch_size, gradient_accumulation_steps=1,
                              learning_rate=learning_rate, warmup_steps=min(200, steps // 10), weight_decay=0.01,
                              resolution=resolution, eval_steps=eval_steps, eval_max_pages=len(heldout_examples),
                              max_new_tokens=max_new_tokens, save_steps=10**9, logging_steps=50, backend="hf",
                              optimizer="adamw_torch", gradient_checkpointing=False, feature_cache=False,
                              dataloader_workers=workers)
    config = OcrloopConfig(base_model=str(checkpoint), dataset_dir=train_root, registry_path=work / "ocrloop.db",
                           models_dir=work / "models", training=training, data=data)
    output = work / "runs" / time.strftime("%Y%m%d-%H%M%S")
    tuner = FineTuner(config, output, validation=(heldout, heldout_examples), console=console)
    tuner.setup()
    result = tuner.run()

    final = evaluate_model(tuner.bundle, heldout, heldout_examples, ReadingSettings.from_training(training),
                           batch_size=batch_size, normalization=Normalization(strip_markdown=True))
    tesseract = score_tesseract(heldout)
    curve = [{"step": v["step"], "cer": v["cer"], "wer": v["wer"],
              "by_category": {k: {"cer": c, "wer": v["wer_by_category"][k]} for k, c in v["by_category"].items()}}
             for v in result.card["metrics"]["validation"]]
    results = {
        "command": "ocrloop bench learn " + " ".join(sys.argv[3:]),
        "workload": {"family": family, "size": size, "parameters": result.card["parameters"]["total"],
                     "train_documents": train_documents, "heldout_documents": heldout_documents,
                     "train_pages": result.card["data"]["train_pages"],
                     "heldout_pages": len(heldout_examples), "categories": list(categories), "scale": scale,
                     "resolution": resolution, "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate},
        "device": result.card["device"], "host": platform.node(), "versions": result.card["versions"],
        "synth_seconds": synth_seconds, "train_seconds": result.card["speed"]["train_seconds"],
        "curve": curve, "final_strip_markdown": report_scores(final.report),
        "tesseract": tesseract,
        "train_loss_by_epoch": result.card["metrics"]["train_loss_by_epoch"],
    }
    tuner.cleanup()
    atomic_write_json(out, results)
    plot_curve(results, out.with_suffix(".png"))
    return results


def add_tesseract_documents(out: Path, work: Path = Path("/tmp/ocrloop-learn")) -> dict[str, Any]:
    """Score Tesseract into an existing ``bench learn`` result (``scoring.add_tesseract``): the held-out documents
    are made again from their seed."""

    def heldout(workload: dict[str, Any]) -> Dataset:
        documents = workload["heldout_documents"]
        root = work / f"heldout-{documents}"
        if not (root / "annotations.json").is_file():
            synthesize_dataset(root, SynthOptions(n=documents, seed=2, categories=tuple(workload["categories"]),
                                                  scale=workload["scale"]), DataConfig())
        return Dataset.open(root, DataConfig())

    return add_tesseract(out, "bench learn", heldout, plot_curve)


def plot_curve(results: dict[str, Any], png: Path) -> Path:
    """CER and WER against steps, overall and per category, with Tesseract's level on the same pages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results["curve"]
    steps = [point["step"] for point in curve]
    categories = sorted({c for point in curve for c in point["by_category"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("cer", "wer")):
        ax.plot(steps, [p[metric] for p in curve], marker="o", color="black", label="model, all")
        for category in categories:
            ax.plot(steps, [p["by_category"].get(category, {}).get(metric, float("nan")) for p in curve], marker=".",
                    label=f"model, {category}")
        if "plain" in results["tesseract"]:
            level = results["tesseract"]["plain"][metric]
            ax.axhline(level, linestyle="--", color="grey", label=f"Tesseract, markup counted ({level:.1%})")
            level = results["tesseract"]["strip_markdown"][metric]
            ax.axhline(level, linestyle=":", color="grey", label=f"Tesseract, markup ignored ({level:.1%})")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"held-out {metric.upper()}")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    workload = results["workload"]
    fig.suptitle(f"{workload['family']} {workload['size']} from scratch, {workload['train_pages']} pages; "
                 f"{workload['heldout_pages']} held-out pages", fontsize=10)
    return save_figure(fig, png)

