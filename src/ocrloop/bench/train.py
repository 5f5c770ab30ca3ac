"""``ocrloop bench train``: the same training workload run by several variants, each in its own process.

Every variant is a real ``ocrloop train`` run over the same synthetic pages, the same
full-size (or tiny) architecture with random weights, the same LoRA targets, rank, batch and
steps; only the flags that define the variant differ. Speed is the median step after warm-up
(the run card keeps every step), memory the CUDA peak. Random weights measure speed and
memory, never accuracy.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.config import DataConfig
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.models import FAMILIES
from ocrloop.train.finetune import RUN_CARD
from ocrloop.workspace import Workspace, init_workspace

# What each variant changes; everything else is shared.
VARIANTS = {
    # Plain transformers + peft as a user would run it: HF gradient checkpointing, SDPA, torch AdamW.
    "baseline": ["--backend", "hf", "--optimizer", "adamw_torch", "--no-skip-frozen-vision-backward"],
    # ocrloop's defaults: Unsloth where available, 8-bit AdamW, no backward through a frozen vision tower.
    "ocrloop": ["--backend", "auto", "--optimizer", "auto"],
    # Unsloth as its notebook runs it, for telling its share from ocrloop's own.
    "unsloth": ["--backend", "unsloth", "--optimizer", "auto", "--no-skip-frozen-vision-backward"],
}


def prepare(work: Path, family: str, size: str, pages: int, categories: tuple[str, ...]) -> tuple[Workspace, Path]:
    """A workspace with synthetic pages and a random-weight checkpoint, both reused when present."""
    workspace, _ = init_workspace(work / "workspace")
    if not any((workspace.config.dataset_dir / "train").iterdir()):
        synthesize_dataset(workspace.config.dataset_dir, SynthOptions(n=pages, seed=1, categories=categories), DataConfig())
    checkpoint = work / "checkpoints" / f"{family}-{size}"
    if not (checkpoint / "config.json").is_file():
        FAMILIES[family]().build_random(checkpoint, size=size)
    return workspace, checkpoint


def run_variant(workspace: Workspace, checkpoint: Path, output: Path, flags: list[str], log: Path) -> dict[str, Any]:
    """One ``ocrloop train`` process; its run card's speed and memory, or the error it ended with."""
    command = [sys.executable, "-m", "ocrloop", "train", "-w", str(workspace.root), "--model", str(checkpoint),
               "--output", str(output), "--eval-steps", "100000", "--eval-max-pages", "1", "--max-new-tokens", "8",
               "--logging-steps", "1", *flags]
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    log.write_text(process.stdout[-20000:] + "\n--- stderr ---\n" + process.stderr[-40000:])
    if process.returncode != 0:
        return {"status": "failed", "command": " ".join(command[1:]), "wall_seconds": wall,
                "error": (process.stderr.strip().splitlines() or ["?"])[-1]}
    card = json.loads((output / RUN_CARD).read_text())
    speed, memory = card["speed"], card["memory"]
    gib = lambda value: value / 2**30 if value is not None else None  # noqa: E731
    return {
        "status": "succeeded", "command": " ".join(command[1:]), "wall_seconds": wall, "backend": card["backend"],
        "steps": speed["steps"], "first_step_seconds": speed["step_seconds"][0],
        "steady_seconds_per_step": speed["steady_seconds_per_step"],
        "steady_samples_per_second": speed["steady_samples_per_second"],
        "steady_tokens_per_second": speed["steady_tokens_per_second"],
        "peak_vram_allocated_gib": gib(memory["peak_vram_allocated_bytes"]),
        "peak_vram_reserved_gib": gib(memory["peak_vram_reserved_bytes"]),
        "trainable_parameters": card["parameters"]["trainable"], "total_parameters": card["parameters"]["total"],
        "vision_without_autograd": card["parameters"].get("vision_without_autograd"),
        "train_loss_by_epoch": card["metrics"]["train_loss_by_epoch"], "device": card["device"], "versions": card["versions"],
    }


def bench_train(out: Path, *, family: str = "deepseek-ocr-2", size: str = "full", resolution: str = "gundam",
                batch_size: int = 8, steps: int = 12, lora_rank: int = 16, lora_targets: str = "attention,mlp,experts",
                variants: list[str] | None = None, work: Path = Path("/tmp/ocrloop-bench"), pages: int = 48,
                registry_path: Path | None = None) -> dict[str, Any]:
    """Run each variant on the same workload; write ``out`` (JSON) with results and the ratios to the baseline.

    With ``registry_path``, ocrloop's ratios to the baseline are also recorded there as a ``bench`` run,
    which the service exports as ``ocr_training_speed_multiplier`` and ``ocr_vram_reduction_percent``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = variants or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    workspace, checkpoint = prepare(work, family, size, pages, ("receipt", "invoice", "tax_form"))
    shared = ["--resolution", resolution, "--batch-size", str(batch_size), "--gradient-accumulation-steps", "1",
              "--max-steps", str(steps), "--warmup-steps", "0", "--lora-rank", str(lora_rank), "--lora-alpha", str(lora_rank),
              "--lora-targets", lora_targets, "--lora-dropout", "0", "--mode", "lora16"]
    results: dict[str, Any] = {
        "command": "ocrloop bench train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "ocrloop bench train",
        "workload": {"family": family, "size": size, "resolution": resolution, "batch_size": batch_size, "steps": steps,
                     "lora_rank": lora_rank, "lora_targets": lora_targets, "pages": pages},
        "host": platform.node(), "variants": {},
    }
    for variant in variants:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        results["variants"][variant] = run_variant(workspace, checkpoint, work / "runs" / f"{variant}-{stamp}",
                                                   shared + VARIANTS[variant], out.parent / f"{out.stem}-{variant}.log")
        atomic_write_json(out, results)  # after each variant: partial results survive
    base = results["variants"].get("baseline", {})
    if base.get("status") == "succeeded":
        for name, result in results["variants"].items():
            if name != "baseline" and result.get("status") == "succeeded":
                # Unsloth adds LoRA on fused MoE experts when "mlp" is targeted: say when the variants differ.
                result["same_trainable_parameters_as_baseline"] = result["trainable_parameters"] == base["trainable_parameters"]
                result["speedup_vs_baseline"] = result["steady_samples_per_second"] / base["steady_samples_per_second"]
                if base["peak_vram_allocated_gib"] and result["peak_vram_allocated_gib"]:
                    result["vram_reduction_vs_baseline"] = 1 - result["peak_vram_allocated_gib"] / base["peak_vram_allocated_gib"]
    atomic_write_json(out, results)
    if registry_path is not None:
        record_benchmark(registry_path, results)
    return results


def record_benchmark(registry_path: Path, results: dict[str, Any]) -> str | None:
    """Record ocrloop's speed-up and VRAM saving over the baseline as a ``bench`` run; None if not measured."""
    from ocrloop.registry import Registry

    ours = results["variants"].get("ocrloop", {})
    if "speedup_vs_baseline" not in ours:
        return None
    with Registry(registry_path) as registry:
        run_id = registry.start_run("bench", {"command": results["command"], **results["workload"]})
        vram = ours["peak_vram_allocated_gib"]
        registry.finish_run(run_id, "succeeded", wall_seconds=sum(v.get("wall_seconds", 0) for v in results["variants"].values()),
                            peak_vram_bytes=int(vram * 2**30) if vram else None,
                            metrics={"speedup_vs_baseline": ours["speedup_vs_baseline"],
                                     "vram_reduction_vs_baseline": ours.get("vram_reduction_vs_baseline"),
                                     "samples_per_second": ours["steady_samples_per_second"],
                                     "baseline_samples_per_second": results["variants"]["baseline"]["steady_samples_per_second"]})
    return run_id
