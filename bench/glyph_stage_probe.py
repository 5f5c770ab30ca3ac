"""How soon does the base reader's first lesson stop sitting on its plateau? (issue 21)

``ocrloop bench pretrain``'s glyph stage alone, one learning rate and one seed: the ``small`` Qwen2.5-VL preset
built with random weights, 30,000 glyph lessons (seed 1), 64 held-out ones (seed 7001), full training in batches
of 256 with warm-up then linear decay, the held-out glyphs read eight times. From scratch the loss first sits at
the text-only entropy (about 3.33) until the model learns to look at the image.

    python bench/glyph_stage_probe.py --out probe.json --steps 700 --learning-rate 3e-4 --seed 0

One run writes ``{"steps", "lr", "seed", "seconds", "curve": [[step, held-out CER]], "loss": [[step, loss]]}``.
On an H200 a 700-step arm takes about 2.5 minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ocrloop.config import DataConfig, OcrloopConfig, TrainingConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.lessons import LessonOptions, synthesize_lessons
from ocrloop.models import FAMILIES
from ocrloop.train.finetune import FineTuner


def probe(out: Path, steps: int, learning_rate: float, seed: int, lessons: int, size: str, work: Path) -> dict:
    started = time.perf_counter()
    data = DataConfig()
    checkpoint = work / "checkpoint"
    FAMILIES["qwen2.5-vl"]().build_random(checkpoint, size=size, seed=seed)
    train, heldout = work / "glyphs", work / "heldout"
    synthesize_lessons(train, LessonOptions("glyphs", lessons, seed=1), data, 8)
    synthesize_lessons(heldout, LessonOptions("glyphs", 64, seed=7001), data)
    validation = Dataset.open(heldout, data)
    gpu = torch.cuda.is_available()
    training = TrainingConfig(
        mode="full", max_steps=steps, batch_size=256, gradient_accumulation_steps=1, learning_rate=learning_rate,
        warmup_steps=min(100, steps // 10), weight_decay=0.01, resolution="base", prompt="ocr", max_new_tokens=12,
        eval_steps=max(1, steps // 8), eval_max_pages=64, read_batch_size=64, save_steps=10**9,
        logging_steps=max(1, steps // 40), backend="hf", optimizer="adamw_torch_fused" if gpu else "adamw_torch",
        gradient_checkpointing=False, feature_cache=False, dataloader_workers=6 if gpu else 0, float32_weights=True)
    config = OcrloopConfig(base_model=str(checkpoint), dataset_dir=train, registry_path=work / "registry.db",
                           models_dir=work / "models", training=training, data=data)
    tuner = FineTuner(config, work / "run", validation=(validation, validation.examples()))
    tuner.setup()
    card = tuner.run().card
    tuner.cleanup()
    result = {"steps": steps, "lr": learning_rate, "seed": seed, "seconds": time.perf_counter() - started,
              "curve": [(point["step"], point["cer"]) for point in card["metrics"]["validation"]],
              "loss": card["metrics"]["loss_by_step"]}
    out.write_text(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (the lessons are fixed).")
    parser.add_argument("--lessons", type=int, default=30_000)
    parser.add_argument("--size", choices=("small", "tiny"), default="small")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocrloop-glyph-probe"))
    args = parser.parse_args()
    work = args.work / f"lr{args.learning_rate}-seed{args.seed}"
    result = probe(args.out, args.steps, args.learning_rate, args.seed, args.lessons, args.size, work)
    print("held-out glyph CER by step:", result["curve"])


if __name__ == "__main__":  # lessons render in forkserver processes
    main()
