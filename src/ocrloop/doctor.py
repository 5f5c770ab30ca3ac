"""``ocrloop doctor``: the plan's set-up check, one line per check with a hint when it fails."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ocrloop.errors import OcrloopError
from ocrloop.extras import GPU_EXTRA, TRACKING_EXTRA, TRACKING_MODULES


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail" or "skip"
    detail: str
    hint: str = ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_checks(model: str, *, backend: str = "auto", resolution: str | None = None, steps: int = 3,
               report: Callable[[Check], None] | None = None) -> list[Check]:
    """Run every check in order; later checks that need an earlier one are skipped when it failed."""
    checks: list[Check] = []

    def add(check: Check) -> Check:
        checks.append(check)
        if report:
            report(check)
        return check

    python_ok = sys.version_info >= (3, 11)
    add(Check("python", "pass" if python_ok else "fail", platform.python_version(), "" if python_ok else "use Python 3.11 or newer"))
    import torch

    add(Check("torch", "pass", torch.__version__))
    cuda = torch.cuda.is_available()
    add(Check("cuda", "pass" if cuda else "skip",
              f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)" if cuda
              else "no CUDA GPU: training runs on the CPU with the hf backend",
              "" if cuda else "on a GPU machine install the CUDA build of torch"))
    if cuda:
        missing = [p for p in GPU_EXTRA if importlib.util.find_spec(p.replace("-", "_")) is None]
        add(Check("gpu extra", "fail" if missing else "pass",
                  f"missing {', '.join(missing)}" if missing else ", ".join(f"{p} {_version(p)}" for p in GPU_EXTRA),
                  "pip install 'ocrloop[gpu]' (or train with --backend hf, without 8-bit AdamW or qlora4/lora8)" if missing else ""))
    else:
        add(Check("gpu extra", "skip", "needs CUDA"))
    tracking = [p for p in TRACKING_EXTRA if importlib.util.find_spec(TRACKING_MODULES[p]) is not None]
    add(Check("tracking extra", "pass" if tracking else "skip", ", ".join(tracking) if tracking else "none installed",
              "" if tracking else "pip install 'ocrloop[tracking]' for training.report_to tensorboard, mlflow or wandb"))

    from ocrloop.models import load_model
    from ocrloop.models.loading import attach_lora, trainable_parameters

    started = time.perf_counter()
    try:
        bundle = load_model(model, backend=backend)
    except OcrloopError as error:
        add(Check("model loads", "fail", str(error), "check --model: a preset, a model folder, or a hub id in the local cache"))
        return checks
    add(Check("model loads", "pass", f"{model} ({bundle.family.name}, {bundle.backend}) in {time.perf_counter() - started:.1f}s"))
    try:
        attach_lora(bundle, rank=16, alpha=16, dropout=0.0, groups=["attention"], seed=0)
        trainable, total = trainable_parameters(bundle.model)
        add(Check("LoRA attaches", "pass", f"{trainable / 1e6:.2f} M of {total / 1e6:.1f} M parameters trainable"))
    except OcrloopError as error:
        add(Check("LoRA attaches", "fail", str(error)))
        return checks
    add(_training_steps(bundle, resolution or bundle.family.resolutions[0], steps))
    return checks


def _training_steps(bundle, resolution: str, steps: int) -> Check:
    import torch

    from ocrloop.data.synth import SynthOptions, generate_documents
    from ocrloop.models.base import collate, to_device

    documents = generate_documents(SynthOptions(n=2, seed=0, categories=("receipt",), scale=0.5))
    encoded = [bundle.encode(d.pages[0], "markdown", d.texts[0], resolution) for d in documents]
    batch = to_device(collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer,
                              dtype=bundle.dtype), bundle.device)
    optimizer = torch.optim.AdamW([p for p in bundle.model.parameters() if p.requires_grad], lr=1e-4)
    cuda = bundle.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    bundle.model.train()
    started = time.perf_counter()
    try:
        losses = []
        for _ in range(steps):
            loss = bundle.model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    except RuntimeError as error:
        return Check("training steps", "fail", str(error).splitlines()[0], "lower --resolution or free GPU memory")
    seconds = (time.perf_counter() - started) / steps
    vram = f", peak VRAM {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
    return Check("training steps", "pass", f"{steps} steps of 2 pages at {resolution}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                 f"{seconds:.2f} s/step{vram}")
