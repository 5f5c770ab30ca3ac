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
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ocrloop.atomic import atomic_write_json
from ocrloop.distributed import launch_environment, launcher
from ocrloop.config import DataConfig
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.models import FAMILIES
from ocrloop.train.finetune import RUN_CARD
from ocrloop.workspace import Workspace, init_workspace

# What each variant changes; everything else is shared.
VARIANTS = {
    # Plain transformers + peft as a user would run it: HF gradient checkpointing, SDPA as PyTorch picks it, torch AdamW.
    "baseline": ["--backend", "hf", "--optimizer", "adamw_torch", "--no-skip-frozen-vision-backward", "--no-feature-cache",
                 "--cudnn-attention"],
    # ocrloop's defaults: Unsloth where available (not compiled), 8-bit AdamW, no backward through a
    # frozen vision tower, image features computed once per page.
    "ocrloop": ["--backend", "auto", "--optimizer", "auto"],
    # The same with Unsloth's compilation, which pays back on long runs only.
    "ocrloop-compile": ["--backend", "auto", "--optimizer", "auto", "--compile"],
    # ocrloop's path on plain transformers + peft, without Unsloth.
    "ocrloop-hf": ["--backend", "hf", "--optimizer", "auto"],
    "ocrloop-hf-nockpt": ["--backend", "hf", "--optimizer", "auto", "--no-gradient-checkpointing"],
    # The same, compiled with torch.compile: fewer launches a step, after the first steps pay for compiling.
    "ocrloop-hf-compile": ["--backend", "hf", "--optimizer", "auto", "--compile"],
    # ocrloop's hf path with peft's own LoRA on fused MoE experts (parametrized weights), for telling the grouped
    # expert LoRA's share.
    "ocrloop-hf-peft-experts": ["--backend", "hf", "--optimizer", "auto", "--no-grouped-expert-lora"],
    # Unsloth as its notebook runs it (compiled), for telling its share from ocrloop's own.
    "unsloth": ["--backend", "unsloth", "--optimizer", "auto", "--compile", "--no-skip-frozen-vision-backward", "--no-feature-cache",
                "--cudnn-attention"],
    # ocrloop's defaults with PyTorch's own choice of attention kernel (cuDNN on an H100).
    "ocrloop-cudnn": ["--backend", "auto", "--optimizer", "auto", "--cudnn-attention"],
}


def prepare(work: Path, family: str, size: str, pages: int, categories: tuple[str, ...],
            exact_train_pages: bool = False) -> tuple[Workspace, Path]:
    """A workspace with synthetic pages and a random-weight checkpoint, both reused when present.

    With ``exact_train_pages`` the train split holds exactly ``pages`` single-page documents
    (one more each for val and test), for whole-run timing."""
    name = (f"workspace-run-{pages}" if exact_train_pages else "workspace") + "-" + "-".join(categories)
    workspace, _ = init_workspace(work / name)
    if not any((workspace.config.dataset_dir / "train").iterdir()):
        options = (SynthOptions(n=pages + 2, seed=1, categories=categories, split_fractions=(1.0, 0.0, 0.0)) if exact_train_pages
                   else SynthOptions(n=pages, seed=1, categories=categories))
        # Rendering takes about 0.2 s a page: hundreds of pages render in processes, a few dozen in this one.
        synthesize_dataset(workspace.config.dataset_dir, options, DataConfig(),
                           workers=min(os.cpu_count() or 1, max(1, pages // 32)))
    checkpoint = work / "checkpoints" / f"{family}-{size}"
    if not (checkpoint / "config.json").is_file():
        FAMILIES[family]().build_random(checkpoint, size=size)
    return workspace, checkpoint


def run_variant(workspace: Workspace, checkpoint: Path, output: Path, flags: list[str], log: Path,
                processes: int = 1) -> dict[str, Any]:
    """One ``ocrloop train`` run (torchrun with ``processes`` above one); its run card's speed and memory, or the
    error it ended with."""
    command = [*launcher(processes), "-m", "ocrloop", "train", "-w", str(workspace.root), "--model", str(checkpoint),
               "--output", str(output), "--eval-steps", "100000", "--eval-max-pages", "1", "--max-new-tokens", "8",
               "--logging-steps", "1", *flags]
    kernels_before = _compiled_kernels()
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=launch_environment(processes))
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
        "processes": speed["processes"],
        "steps": speed["steps"], "first_step_seconds": speed["step_seconds"][0],
        "steady_seconds_per_step": speed["steady_seconds_per_step"],
        "steady_samples_per_second": speed["steady_samples_per_second"],
        "steady_tokens_per_second": speed["steady_tokens_per_second"],
        "peak_vram_allocated_gib": gib(memory["peak_vram_allocated_bytes"]),
        "peak_vram_reserved_gib": gib(memory["peak_vram_reserved_bytes"]),
        "peak_vram_prepare_gib": gib(memory["peak_vram_prepare_allocated_bytes"]),
        "peak_vram_training_gib": gib(memory["peak_vram_training_allocated_bytes"]),
        "vision_offloaded_gib": gib(memory["vision_offloaded_bytes"]),
        "trainable_parameters": card["parameters"]["trainable"], "total_parameters": card["parameters"]["total"],
        "vision_without_autograd": card["parameters"].get("vision_without_autograd"),
        "train_loss_by_epoch": card["metrics"]["train_loss_by_epoch"], "device": card["device"], "versions": card["versions"],
        "prepare_seconds": speed.get("prepare_seconds"), "train_seconds": speed["train_seconds"],
        "epoch_seconds": speed.get("epoch_seconds", []), "feature_cache": card.get("feature_cache"),
        "train_pages": card["data"]["train_pages"], "profile": speed.get("profile"), "compile": speed.get("compile"),
        # Triton kernels already compiled on this machine: 0 means the first step paid for compiling them all.
        "compiled_kernels_before": kernels_before,
    }


def workload_flags(resolution: str, batch_size: int, steps: int, epochs: float | None, lora_rank: int, lora_targets: str) -> list[str]:
    """The ``ocrloop train`` flags every variant shares: ``epochs`` (run mode) or ``steps``, no warm-up, no checkpoints."""
    length = ["--epochs", str(epochs)] if epochs is not None else ["--max-steps", str(steps)]
    return ["--resolution", resolution, "--batch-size", str(batch_size), "--gradient-accumulation-steps", "1", *length,
            "--warmup-steps", "0", "--lora-rank", str(lora_rank), "--lora-alpha", str(lora_rank), "--save-steps", "100000",
            "--lora-targets", lora_targets, "--lora-dropout", "0"]


def _compiled_kernels() -> int:
    """Entries in Triton's on-disk kernel cache, kept between runs on one machine: where Unsloth's eager
    kernels go (compiled runs keep theirs in Inductor's cache, not counted here)."""
    folder = Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def bench_train(out: Path, *, family: str = "deepseek-ocr-2", size: str = "full", resolution: str = "gundam",
                batch_size: int = 8, steps: int = 12, lora_rank: int = 16, lora_targets: str = "attention,mlp,experts",
                variants: list[str] | None = None, work: Path = Path("/tmp/ocrloop-bench"), pages: int = 48,
                epochs: float | None = None, mode: str = "lora16", registry_location: str | Path | None = None,
                categories: tuple[str, ...] = ("receipt", "invoice", "tax_form"),
                processes: tuple[int, ...] = (1,), profile_steps: int = 0) -> dict[str, Any]:
    """Run each variant on the same workload; write ``out`` (JSON) with results and the ratios to the baseline.

    Each variant runs once per count in ``processes`` (GPUs; torchrun above one, ``batch_size`` per process), in that
    order; a count may repeat (``2,1,2,1``: neither count always runs first on a cold machine). A variant on N
    processes is named ``VARIANT@N`` (``VARIANT@N#2`` for its second run, and so on) and carries
    ``scaling_vs_one_process``: its rate over the median rate of the same variant's one-process runs.
    ``scaling_medians`` gives, per variant and count, the median rate over the median one-process rate.

    Step mode (``epochs`` None): ``steps`` optimizer steps, speed from the median step after warm-up.
    Run mode: ``pages`` training pages x ``epochs``, timed from the first page to the last step: for
    ocrloop that includes computing every page's image features; for the others only their steps
    (their own page checks are not counted, which favours them).

    With ``registry_location``, ocrloop's ratios to the baseline are also recorded there as a ``bench`` run,
    which the service exports as ``ocr_training_speed_multiplier`` and ``ocr_vram_reduction_percent``.

    With ``profile_steps``, every run profiles that many steps from its middle (``training.profile_steps``: GPU-busy
    share, kernels per step, costliest operations on the GPU and on the host); they run slower, so whole-run figures
    are for runs without it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = variants or list(VARIANTS)
    # "ocrloop:qlora4" runs a variant in another training mode (e.g. QLoRA against the 16-bit baseline).
    unknown = [v for v in variants if v.split(":")[0] not in VARIANTS or v.count(":") > 1]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    workspace, checkpoint = prepare(work, family, size, pages, categories, exact_train_pages=epochs is not None)
    shared = workload_flags(resolution, batch_size, steps, epochs, lora_rank, lora_targets) + \
        (["--profile-steps", str(profile_steps)] if profile_steps else [])
    results: dict[str, Any] = {
        "command": "ocrloop bench train " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "ocrloop bench train",
        "workload": {"family": family, "size": size, "resolution": resolution, "batch_size": batch_size, "mode": mode,
                     "steps": None if epochs is not None else steps, "epochs": epochs, "lora_rank": lora_rank,
                     "lora_targets": lora_targets, "pages": pages, "categories": list(categories),
                     "profile_steps": profile_steps},
        "host": platform.node(), "device_bf16_matmul_tflops": measured_matmul_tflops(),
        "model_flops": language_model_flops(checkpoint), "variants": {},
    }
    speed_key = "whole_run_samples_per_second" if epochs is not None else "steady_samples_per_second"
    for variant in variants:
        name, _, variant_mode = variant.partition(":")
        flags = shared + VARIANTS[name] + ["--mode", variant_mode or mode]
        runs: dict[int, list[dict[str, Any]]] = {}
        for count in processes:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            runs.setdefault(count, [])
            key = (variant if count == 1 else f"{variant}@{count}") + (f"#{len(runs[count]) + 1}" if runs[count] else "")
            result = run_variant(workspace, checkpoint, work / "runs" / f"{name}-{variant_mode or mode}-{count}-{stamp}", flags,
                                 out.parent / f"{out.stem}-{key.replace(':', '-').replace('@', '-x').replace('#', '-')}.log",
                                 processes=count)
            result["mode"] = variant_mode or mode
            if result["status"] == "succeeded":
                _add_rates(result, results, whole_run=epochs is not None)
                runs[count].append(result)
            results["variants"][key] = result
            atomic_write_json(out, results)  # after each run: partial results survive
        singles = runs.get(1, [])
        if singles:
            single_rate = statistics.median(r[speed_key] for r in singles)
            for count, done in runs.items():
                for result in done if count > 1 else ():
                    result["scaling_vs_one_process"] = result[speed_key] / single_rate
                    # Under torchrun "auto" means hf: a ratio against Unsloth on one GPU is not scaling alone.
                    result["same_backend_as_one_process"] = result["backend"] == singles[0]["backend"]
                if count > 1 and done:
                    results.setdefault("scaling_medians", {})[f"{variant}@{count}"] = (
                        statistics.median(r[speed_key] for r in done) / single_rate)
    for reference in ("baseline", "unsloth"):
        base = results["variants"].get(reference, {})
        if base.get("status") != "succeeded":
            continue
        for name, result in results["variants"].items():
            if name == reference or result.get("status") != "succeeded":
                continue
            result[f"speedup_vs_{reference}"] = result[speed_key] / base[speed_key]
            if base["peak_vram_allocated_gib"] and result["peak_vram_allocated_gib"]:
                result[f"vram_reduction_vs_{reference}"] = 1 - result["peak_vram_allocated_gib"] / base["peak_vram_allocated_gib"]
            if reference == "baseline":
                # Unsloth adds LoRA on fused MoE experts when "mlp" is targeted: say when the variants differ.
                result["same_trainable_parameters_as_baseline"] = result["trainable_parameters"] == base["trainable_parameters"]
    atomic_write_json(out, results)
    if registry_location is not None:
        record_benchmark(registry_location, results)
    return results


def _add_rates(result: dict[str, Any], results: dict[str, Any], whole_run: bool) -> None:
    """Whole-run and per-epoch rates (run mode) and model FLOPs utilization."""
    pages = result["train_pages"]
    if whole_run:
        cached = bool((result.get("feature_cache") or {}).get("enabled"))
        # Only ocrloop's page pass does work the steps then skip (computing features); the others' is not counted.
        seconds = result["train_seconds"] + ((result["prepare_seconds"] or 0) if cached else 0)
        epochs = results["workload"]["epochs"]
        result["whole_run_seconds"] = seconds
        result["whole_run_samples_per_second"] = pages * epochs / seconds
        result["epoch_samples_per_second"] = [pages / e for e in result["epoch_seconds"]]
    flops, peak = results["model_flops"], results["device_bf16_matmul_tflops"]
    if flops and "error" not in flops and peak:
        rate = result["whole_run_samples_per_second"] if whole_run else result["steady_samples_per_second"]
        tokens_per_sample = result["steady_tokens_per_second"] / result["steady_samples_per_second"]
        achieved = rate * flops["training_flops_per_token"] * tokens_per_sample
        result["model_tflops_per_second"] = achieved / 1e12
        result["mfu"] = achieved / (peak * 1e12 * result["processes"])  # each process has a device


def measured_matmul_tflops(size: int = 8192, repeats: int = 20) -> float | None:
    """The device's measured dense bf16 matrix-multiply rate (best of ``repeats``), or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * size**3 / best / 1e12


def language_model_flops(checkpoint: Path) -> dict[str, Any] | None:
    """Training FLOPs per token of the language model, counted from the architecture.

    Forward: 2 x the matrix parameters a token passes through (routed experts scaled by
    ``num_experts_per_tok / n_routed_experts``, the output head included, embeddings excluded).
    Training counts forward + backward to the activations (2x forward): LoRA computes no gradient
    for the frozen weights, and the adapters' own FLOPs are negligible. Attention scores are left
    out (short sequences), and so is the vision tower, so MFU here is a lower bound."""
    import torch

    from ocrloop.models import detect_family

    try:
        model_class = detect_family(json.loads((Path(checkpoint) / "config.json").read_text())).model_class()
        config = model_class.config_class.from_pretrained(checkpoint)
        with torch.device("meta"):
            model = model_class(config)
    except Exception as error:  # noqa: BLE001 - unknown architectures: no MFU, say why
        return {"error": f"cannot count FLOPs: {error}"}
    text = getattr(config, "text_config", config)
    routed, active = getattr(text, "n_routed_experts", None), getattr(text, "num_experts_per_tok", None)
    total = float(model.get_output_embeddings().weight.numel())  # the head, even when tied to the embeddings
    for name, parameter in model.named_parameters():
        if "language_model" not in name or "embed_tokens" in name or parameter.dim() < 2:
            continue
        share = active / routed if routed and active and ".experts." in name else 1.0
        total += parameter.numel() * share
    forward = 2 * total
    return {"active_matrix_parameters": total, "forward_flops_per_token": forward, "training_flops_per_token": 2 * forward}


def record_benchmark(registry_location: str | Path, results: dict[str, Any]) -> str | None:
    """Record ocrloop's speed-up and VRAM saving over the baseline as a ``bench`` run; None if not measured."""
    from ocrloop.registry import Registry

    ours = next((v for k, v in results["variants"].items() if k.split(":")[0] == "ocrloop"), {})
    if "speedup_vs_baseline" not in ours:
        return None
    with Registry(registry_location) as registry:
        run_id = registry.start_run("bench", {"command": results["command"], **results["workload"]})
        vram = ours["peak_vram_allocated_gib"]
        registry.finish_run(run_id, "succeeded", wall_seconds=sum(v.get("wall_seconds", 0) for v in results["variants"].values()),
                            peak_vram_bytes=int(vram * 2**30) if vram else None,
                            metrics={"speedup_vs_baseline": ours["speedup_vs_baseline"],
                                     "vram_reduction_vs_baseline": ours.get("vram_reduction_vs_baseline"),
                                     "samples_per_second": ours["steady_samples_per_second"],
                                     "baseline_samples_per_second": results["variants"]["baseline"]["steady_samples_per_second"]})
    return run_id
