"""``ocrloop bench ocr``: OCR generation speed, page by page and batched.

A full-size (or tiny) architecture with random weights reads synthetic pages at a resolution
mode. Random weights would stop at any length, so each page is made to generate as many tokens as
its ground truth would take (characters / ``chars_per_token``); a batch runs as long as its longest
page, as real batched generation does. Reported per batch size: pages/s, seconds per page (for
batch 1, the latency of one page), generated tokens/s and peak VRAM. Random weights measure speed,
never accuracy.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.train import prepare
from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model


def bench_ocr(out: Path, *, family: str = "deepseek-ocr-2", size: str = "full", resolution: str = "base",
              batch_sizes: tuple[int, ...] = (1, 8, 32), pages: int = 32, single_pages: int = 3,
              cache_implementation: str | None = "static", chars_per_token: float = 3.0,
              work: Path = Path("/tmp/ocrloop-bench"), progress=print) -> dict[str, Any]:
    """Measure generation at each batch size on the same pages; write ``out`` (JSON) and return it.

    Batch size 1 reads ``single_pages`` pages (its rate is per page); larger sizes read ``pages`` pages.
    The first batch of each size is a warm-up (compilation) and is not timed."""
    workspace, checkpoint = prepare(work, family, size, pages + 8, ("receipt", "invoice", "tax_form"))
    dataset = Dataset.open(workspace.config.dataset_dir, workspace.config.data)
    examples = dataset.examples("train")
    bundle = load_model(str(checkpoint), backend="hf")
    bundle.model.eval()
    images = [(example, image) for example, image in dataset.iter_images(examples)]
    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {
        "command": "ocrloop bench ocr", "workload": {
            "family": family, "size": size, "resolution": resolution, "cache_implementation": cache_implementation,
            "chars_per_token": chars_per_token, "pages": len(images)},
        "host": platform.node(), "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, **_versions()}, "batch_sizes": {},
    }

    def read(chunk) -> tuple[float, int]:
        tokens = max(math.ceil(len(example.text) / chars_per_token) for example, _ in chunk)
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        bundle.generate([image for _, image in chunk], resolution=resolution, max_new_tokens=tokens, min_new_tokens=tokens,
                        cache_implementation=cache_implementation)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, tokens

    for batch_size in batch_sizes:
        count = single_pages if batch_size == 1 else math.ceil(pages / batch_size) * batch_size
        # A warm-up batch, then count pages; pages are reused in turn when there are fewer.
        order = [images[i % len(images)] for i in range(count + batch_size)]
        chunks = [order[i:i + batch_size] for i in range(0, count + batch_size, batch_size)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            read(chunks[0])  # warm-up: compilation and autotuning
            timed = [read(chunk) for chunk in chunks[1:]]
        except torch.OutOfMemoryError as error:
            results["batch_sizes"][str(batch_size)] = {"status": "out of memory", "error": str(error).splitlines()[0]}
            torch.cuda.empty_cache()
            continue
        seconds = sum(t for t, _ in timed)
        read_pages = batch_size * len(timed)
        generated = sum(tokens * batch_size for _, tokens in timed)
        entry = {
            "status": "succeeded", "pages": read_pages, "seconds": seconds, "pages_per_second": read_pages / seconds,
            "seconds_per_batch": seconds / len(timed), "generated_tokens_per_second": generated / seconds,
            "mean_new_tokens_per_page": sum(tokens for _, tokens in timed) / len(timed),
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
        results["batch_sizes"][str(batch_size)] = entry
        progress(f"batch {batch_size}: {entry['pages_per_second']:.2f} pages/s, {entry['seconds_per_batch']:.2f} s per batch, "
                 f"{entry['generated_tokens_per_second']:.0f} tokens/s")
        atomic_write_json(out, results)
    atomic_write_json(out, results)
    return results


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("transformers",)}
