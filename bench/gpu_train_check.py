"""GPU verification of the training engine (issue 3): full-size architectures, random weights,
a few steps each through `ocrloop train` itself, on the Unsloth backend.

    python bench/gpu_train_check.py --out DIR [--only deepseek-ocr-2-lora16,...]

Builds the published DeepSeek-OCR-2 (3.39 B) and Qwen2.5-VL-7B (8.29 B) architectures with random
weights, renders synthetic pages, runs each configuration in its own process, and writes one JSON
with steps/s, samples/s and peak VRAM from each run card. Random weights measure speed and memory,
not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ocrloop.config import DataConfig
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.models import FAMILIES
from ocrloop.workspace import init_workspace

RUNS = {
    "deepseek-ocr-2-lora16": ("deepseek-ocr-2", ["--mode", "lora16", "--resolution", "base"]),
    "deepseek-ocr-2-qlora4": ("deepseek-ocr-2", ["--mode", "qlora4", "--resolution", "base"]),
    "qwen2.5-vl-7b-qlora4": ("qwen2.5-vl", ["--mode", "qlora4", "--resolution", "base"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ocrloop-gpu-check"))
    parser.add_argument("--only", default=",".join(RUNS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workspace, _ = init_workspace(args.work / "workspace")
    if not any((workspace.config.dataset_dir / "train").iterdir()):
        synthesize_dataset(workspace.config.dataset_dir, SynthOptions(n=40, seed=1, categories=("receipt", "invoice", "tax_form")),
                           DataConfig())
    results = {}
    for name in args.only.split(","):
        family_name, flags = RUNS[name]
        checkpoint = args.work / "checkpoints" / family_name
        if not (checkpoint / "config.json").is_file():
            started = time.perf_counter()
            FAMILIES[family_name]().build_random(checkpoint, size="full")
            print(f"built {checkpoint} in {time.perf_counter() - started:.0f}s", flush=True)
        output = args.work / "runs" / name
        command = [sys.executable, "-m", "ocrloop", "train", "-w", str(workspace.root), "--model", str(checkpoint),
                   "--output", str(output), "--backend", "unsloth", "--max-steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--gradient-accumulation-steps", "1", "--warmup-steps", "0",
                   "--eval-steps", "1000", "--eval-max-pages", "4", "--max-new-tokens", "16", "--logging-steps", "1", *flags]
        started = time.perf_counter()
        process = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        wall = time.perf_counter() - started
        (args.out / f"{name}.log").write_text(process.stdout[-20000:] + "\n--- stderr ---\n" + process.stderr[-40000:])
        if process.returncode != 0:
            results[name] = {"status": "failed", "returncode": process.returncode, "wall_seconds": wall,
                             "error": (process.stderr.strip().splitlines() or ["?"])[-1]}
            print(f"{name}: FAILED {results[name]['error']}", flush=True)
            (args.out / "gpu_train_check.json").write_text(json.dumps(results, indent=2))
            continue
        card = json.loads((output / "run_card.json").read_text())
        speed, memory = card["speed"], card["memory"]
        results[name] = {
            "status": "succeeded", "command": " ".join(command[1:]), "wall_seconds": wall, "backend": card["backend"],
            "steps": speed["steps"], "train_seconds": speed["train_seconds"],
            "steps_per_second": speed["steps"] / speed["train_seconds"], "samples_per_second": speed["samples_per_second"],
            "tokens_per_second": speed["tokens_per_second"], "first_step_seconds": speed["step_seconds"][0],
            "steady_seconds_per_step": speed["steady_seconds_per_step"],
            "steady_samples_per_second": speed["steady_samples_per_second"],
            "steady_tokens_per_second": speed["steady_tokens_per_second"],
            "peak_vram_allocated_gib": memory["peak_vram_allocated_bytes"] / 2**30,
            "peak_vram_reserved_gib": memory["peak_vram_reserved_bytes"] / 2**30,
            "trainable_parameters": card["parameters"]["trainable"], "total_parameters": card["parameters"]["total"],
            "train_loss_by_epoch": card["metrics"]["train_loss_by_epoch"], "device": card["device"], "versions": card["versions"],
        }
        print(f"{name}: {results[name]['steady_seconds_per_step']:.2f} s/step after warm-up "
              f"(first step {results[name]['first_step_seconds']:.0f}s), {results[name]['peak_vram_allocated_gib']:.1f} GiB", flush=True)
        (args.out / "gpu_train_check.json").write_text(json.dumps(results, indent=2))  # after each run: partial results survive


if __name__ == "__main__":
    main()
