"""``ocrloop bench lines``: does training a small model keep the GPU busy?

The workload of learning to read from scratch: the ``small`` Qwen2.5-VL preset (random weights), fully
fine-tuned at ``--resolution tiny --prompt ocr`` on single-line images (8 random capitals and digits,
448x112). The model is small, so a step costs the GPU milliseconds; whatever else the run does per
sample (decoding, preprocessing, collating, copying, Python per image) shows up directly as lost speed.
It reports samples/s for the whole run and for steady steps, the page check's time, and a profile of a
few steady steps: the share of wall time the GPU was busy and the most expensive operations.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ocrloop.atomic import atomic_write_json
from ocrloop.config import DataConfig, OcrloopConfig, TrainingConfig
from ocrloop.data.synth import LineOptions, synthesize_lines
from ocrloop.models import FAMILIES


def bench_lines(out: Path, *, size: str = "small", lines: int = 20_000, batch_size: int = 256, steps: int = 300,
                learning_rate: float = 1e-3, workers: int = 8, optimizer: str = "auto", profile_steps: int = 0,
                compile: bool = False, work: Path = Path("/tmp/ocrloop-lines"), console=None) -> dict[str, Any]:
    """Train ``size`` on ``lines`` single-line images for ``steps`` steps of ``batch_size``; write ``out`` (JSON).

    With ``profile_steps``, that many steady steps from the middle of the run are profiled (the profiler slows
    them, so whole-run figures are for runs without it)."""
    from ocrloop.train.finetune import FineTuner

    data = DataConfig()
    root = work / f"lines-{lines}"
    started = time.perf_counter()
    if not (root / "annotations.json").is_file():
        synthesize_lines(root, LineOptions(n=lines, seed=1), data)
    synth_seconds = time.perf_counter() - started
    checkpoint = work / "checkpoints" / f"qwen2.5-vl-{size}"
    if not (checkpoint / "config.json").is_file():
        FAMILIES["qwen2.5-vl"]().build_random(checkpoint, size=size)
    if optimizer == "auto":
        optimizer = "adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch"
    training = TrainingConfig(mode="full", max_steps=steps, batch_size=batch_size, gradient_accumulation_steps=1,
                              learning_rate=learning_rate, warmup_steps=min(100, steps // 10), weight_decay=0.01,
                              resolution="tiny", prompt="ocr", max_new_tokens=16, save_steps=10**9, logging_steps=50,
                              backend="hf", optimizer=optimizer, gradient_checkpointing=False, feature_cache=False,
                              dataloader_workers=workers, profile_steps=profile_steps, compile=compile)
    config = OcrloopConfig(base_model=str(checkpoint), dataset_dir=root, registry_path=work / "ocrloop.db",
                           models_dir=work / "models", training=training, data=data)
    tuner = FineTuner(config, work / "runs" / time.strftime("%Y%m%d-%H%M%S"), console=console)
    try:
        tuner.setup()
        card = tuner.run().card
    finally:
        tuner.cleanup()
    speed = card["speed"]
    samples = steps * batch_size
    results = {
        "command": "ocrloop bench lines " + " ".join(sys.argv[3:]),
        "workload": {"family": "qwen2.5-vl", "size": size, "parameters": card["parameters"]["total"], "lines": lines,
                     "batch_size": batch_size, "steps": steps, "mode": "full", "resolution": "tiny", "prompt": "ocr",
                     "optimizer": optimizer, "dataloader_workers": workers, "compile": compile,
                     "tokens_per_sample": speed.get("tokens_per_second")
                     and speed["tokens_per_second"] * speed["train_seconds"] / samples},
        "device": card["device"], "host": platform.node(), "cpus": torch.get_num_threads(), "versions": card["versions"],
        "synth_seconds": synth_seconds,
        "page_check_seconds": speed["prepare_seconds"],
        "train_seconds": speed["train_seconds"],
        "samples_per_second": samples / speed["train_seconds"],
        "samples_per_second_with_page_check": samples / (speed["train_seconds"] + speed["prepare_seconds"]),
        "steady_samples_per_second": speed.get("steady_samples_per_second"),
        "epoch_seconds": speed["epoch_seconds"],
        "loss_by_epoch": card["metrics"]["train_loss_by_epoch"],
        "peak_vram_allocated_bytes": card["memory"]["peak_vram_allocated_bytes"],
        "profile": speed.get("profile", {}),
        "compile": speed.get("compile"),
    }
    atomic_write_json(out, results)
    return results
