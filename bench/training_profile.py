"""Where a whole training run of DeepSeek-OCR-2 spends its time (issue 9): the vision-tower pass that fills
the feature cache, and the training steps. Full-size architecture, random weights, the bench's 64
gundam pages (invoice, tax form); speed and memory only.

    python bench/training_profile.py feature-pass --out DIR
    python bench/training_profile.py train --out DIR --backend unsloth --tag NAME [extra ocrloop train flags]

``feature-pass`` times the tower over 16 pages at 1-16 pages per pass, with and without
``bounded_vision_memory``, and writes DIR/feature_pass.json (seconds a page, activation peak above
the weights, largest difference to the first setting's features).
``train`` runs ``ocrloop train`` in this process with the bench's whole-run flags and writes
DIR/train-NAME.json: a cProfile of the first step and of step 7, and a torch profile of steps
``--profile-at`` to +3 (wall time, time the GPU was busy, the top operators by GPU and by CPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import time
from dataclasses import replace
from pathlib import Path

WORK = Path("/tmp/ocrloop-bench")
CATEGORIES = ("invoice", "tax_form")


def _log(*values) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *values, flush=True)


def _workload(size: str, pages: int):
    from ocrloop.bench.train import prepare

    return prepare(WORK, "deepseek-ocr-2", size, pages, CATEGORIES, exact_train_pages=True)


def feature_pass(out: Path, size: str, pages: int) -> None:
    from ocrloop.models.loading import prepare_backend

    prepare_backend("hf")
    import torch

    from ocrloop.data.dataset import Dataset
    from ocrloop.models import load_model
    from ocrloop.models.base import collate, to_device

    workspace, checkpoint = _workload(size, pages)
    b = load_model(str(checkpoint), backend="hf", mode="lora16", for_training=True)
    b.model.train()
    dataset = Dataset.open(workspace.config.dataset_dir, workspace.config.data)
    examples = dataset.examples("train")[:16]
    started = time.perf_counter()
    for example in examples[:4]:
        b.encode(dataset.load_image(example), "markdown", example.text, "gundam")
    one_thread = (time.perf_counter() - started) / 4
    encoded = [b.encode(image, "markdown", example.text, "gundam") for example, image in dataset.iter_images(examples)]
    _log("encode, one thread, s/page", one_thread, "views", [int(e.vision["num_local_patches"][0]) + 1 for e in encoded])
    results = {"encode_seconds_per_page_one_thread": one_thread, "runs": []}

    def run(pages_per_forward: int, bounded: bool):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        features = []
        for start in range(0, len(encoded), pages_per_forward):
            chunk = [replace(e, vision=to_device(e.vision, b.device)) for e in encoded[start:start + pages_per_forward]]
            batch = to_device(collate(chunk, b.tokenizer.pad_token_id, family=b.family, tokenizer=b.tokenizer, dtype=b.dtype), b.device)
            inputs = {k: batch[k] for k in b.family.feature_input_keys if k in batch}
            bounding = b.family.bounded_vision_memory(b.model) if bounded else contextlib.nullcontext()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), bounding:
                features += [f.detach() for f in b.model.get_image_features(**inputs, return_dict=True).pooler_output]
        torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated() - base, features

    run(2, False)  # warm-up
    reference = None
    for bounded in (False, True):
        for pages_per_forward in (1, 2, 4, 8, 16):
            try:
                seconds, peak, features = run(pages_per_forward, bounded)
            except torch.OutOfMemoryError:
                _log("out of memory", pages_per_forward, bounded)
                torch.cuda.empty_cache()
                continue
            difference = max(float((a.float() - r.float()).abs().max()) for a, r in zip(features, reference)) if reference else 0.0
            reference = reference or features
            row = {"pages_per_forward": pages_per_forward, "bounded": bounded, "seconds_per_page": seconds / len(encoded),
                   "activation_peak_gib": peak / 2**30, "max_abs_diff_vs_first": difference}
            results["runs"].append(row)
            _log(row)
            torch.cuda.empty_cache()
    results["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    (out / "feature_pass.json").write_text(json.dumps(results, indent=1))


def train(out: Path, size: str, pages: int, backend: str, tag: str, profile_at: int, extra: list[str]) -> None:
    from ocrloop.models.loading import prepare_backend

    prepare_backend(backend, compile=False)
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import TrainerCallback
    from typer.main import get_command

    from ocrloop.bench.train import VARIANTS, workload_flags
    from ocrloop.cli import app
    from ocrloop.config import apply_overrides
    from ocrloop.train.finetune import train as train_run

    workspace, checkpoint = _workload(size, pages)
    report: dict = {}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class Profiler(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.step_label = record_function("## training_step")
            self.step_label.__enter__()
            if state.global_step in (0, 6):
                self.python = cProfile.Profile()
                self.python.enable()
            if state.global_step == profile_at:
                sync()
                self.torch = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.torch.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_label.__exit__(None, None, None)
            step = state.global_step
            if step in (1, 7):
                self.python.disable()
                text = io.StringIO()
                pstats.Stats(self.python, stream=text).sort_stats("cumulative").print_stats(45)
                report[f"cprofile_step{step - 1}"] = text.getvalue()
            if step == profile_at + 4:
                sync()
                wall = time.perf_counter() - self.started
                self.torch.__exit__(None, None, None)
                kernels = sorted((e.time_range.start, e.time_range.end) for e in self.torch.events()
                                 if e.device_type == torch.autograd.DeviceType.CUDA)
                busy, current = 0, None  # microseconds covered by at least one kernel
                for begin, end in kernels:
                    if current is None or begin > current[1]:
                        busy += current[1] - current[0] if current else 0
                        current = [begin, end]
                    else:
                        current[1] = max(current[1], end)
                busy += current[1] - current[0] if current else 0
                averages = self.torch.key_averages()
                report["profile_steps"] = {"wall_s": wall, "gpu_busy_s": busy / 1e6, "kernels": len(kernels)}
                report["by_cuda"] = averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
                report["by_cpu"] = averages.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70)
                _log(report["profile_steps"])

    run_dir = WORK / "runs" / f"profile-{tag}"
    flags = [*workload_flags("gundam", 8, 0, 3.0, 16, "attention,mlp,experts"), "--mode", "lora16"]
    variant = VARIANTS["ocrloop" if backend == "unsloth" else "ocrloop-hf"]
    # The bench's flags, parsed by `ocrloop train` itself, become the run's configuration.
    parsed = get_command(app).commands["train"].make_context("train", [
        "-w", str(workspace.root), "--model", str(checkpoint), "--output", str(run_dir), "--eval-steps", "100000",
        "--eval-max-pages", "1", "--max-new-tokens", "8", "--logging-steps", "1", *flags, *variant, *extra]).params
    overrides = {key.replace("__", ".").lstrip("."): value for key, value in parsed.items() if "__" in key and value is not None}
    if isinstance(overrides.get("training.lora_targets"), str):
        overrides["training.lora_targets"] = overrides["training.lora_targets"].split(",")
    train_run(apply_overrides(workspace.config, overrides), run_dir, callbacks=[Profiler()])
    card = json.loads((run_dir / "run_card.json").read_text())
    report.update(speed=card["speed"], memory=card["memory"], feature_cache=card["feature_cache"])
    (out / f"train-{tag}.json").write_text(json.dumps(report, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["feature-pass", "train"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", default="full", help="full, or tiny to try the script on a CPU")
    parser.add_argument("--pages", type=int, default=64)
    parser.add_argument("--backend", default="unsloth")
    parser.add_argument("--tag", default="run")
    parser.add_argument("--profile-at", type=int, default=10, help="first of the four profiled steps")
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "feature-pass":
        feature_pass(args.out, args.size, args.pages)
    else:
        train(args.out, args.size, args.pages, args.backend, args.tag, args.profile_at, extra)


if __name__ == "__main__":
    main()
