"""How soon does the base reader's first lesson stop sitting on its plateau? (issue 21)

``ocrloop bench pretrain``'s glyph stage alone (its ``stage_training``), one learning rate and one seed: the
``small`` Qwen2.5-VL preset built with random weights, 30,000 glyph lessons (seed 1), 64 held-out ones (seed 7001),
full training in batches of 256 with warm-up then linear decay, the held-out glyphs read eight times. From scratch the loss first sits at
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

from ocrloop.bench.pretrain import lessons_ready, stage_training
from ocrloop.config import DataConfig, OcrloopConfig
from ocrloop.data.lessons import LessonOptions
from ocrloop.models import FAMILIES
from ocrloop.train.finetune import FineTuner


def probe(out: Path, steps: int, learning_rate: float, seed: int, lessons: int, size: str, work: Path) -> dict:
    started = time.perf_counter()
    data = DataConfig()
    checkpoint = work / "checkpoint"
    FAMILIES["qwen2.5-vl"]().build_random(checkpoint, size=size, seed=seed)
    train = lessons_ready(work / "glyphs", LessonOptions("glyphs", lessons, seed=1), data, 8)
    validation = lessons_ready(work / "heldout", LessonOptions("glyphs", 64, seed=7001), data, 1)
    training = stage_training(steps, 256, learning_rate, 12, resolution="base", eval_steps=max(1, steps // 8), heldout=64,
                              workers=6 if torch.cuda.is_available() else 0, logging_steps=max(1, steps // 40))
    config = OcrloopConfig(base_model=str(checkpoint), dataset_dir=train.root, registry_path=work / "registry.db",
                           models_dir=work / "models", training=training, data=data)
    tuner = FineTuner(config, work / "run", validation=(validation, validation.examples()), dataset=train)
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
