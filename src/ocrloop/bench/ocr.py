"""``ocrloop bench ocr``: OCR generation speed, page by page and batched.

A full-size (or tiny) architecture with random weights reads synthetic pages at a resolution
mode. Random weights would stop at any length, so each page is made to generate as many tokens as
its ground truth would take (characters / ``chars_per_token``), or exactly ``tokens_per_page``; a batch
runs as long as its longest page, as real batched generation does. Reported per batch size: pages/s,
seconds per page (for batch 1, the latency of one page), generated tokens/s and peak VRAM, and where one
batch's time goes: the vision tower alone, prefill (a 1-token generation less the tower; it includes preparing
the pages on the CPU, also timed alone) and decode per token (the rest, over the remaining tokens). Random weights
measure speed, never accuracy. With ``cache_implementation="continuous"`` each batch is read through ocrloop's
continuous decoder (``models.continuous``, a slot per page), from a copy of the model whose stop tokens are never
chosen, so that every page runs to its length there too; its prefill is the admission of the batch (the first
token), timed on the batch's one decoder.

Under torchrun every process reads its own ``pages`` pages on its own GPU (the same work per GPU), and a batch
size's rate is all their pages over the slowest process's time. ``bench_ocr_processes`` runs the whole bench at
several process counts, one launch each, and compares them.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ocrloop import distributed
from ocrloop.atomic import atomic_write_json
from ocrloop.bench.train import prepare
from ocrloop.data.dataset import Dataset
from ocrloop.models import FAMILIES, load_model
from ocrloop.models.continuous import ContinuousDecoder
from ocrloop.models.experts import use_experts
from ocrloop.models.reading import ReadingSettings


def bench_ocr(out: Path, *, family: str = "deepseek-ocr-2", size: str = "full", resolution: str = "base",
              batch_sizes: tuple[int, ...] = (1, 8, 32), pages: int = 32, single_pages: int = 3,
              cache_implementation: str | None = "static", chars_per_token: float = 3.0,
              tokens_per_page: int | None = None, profile_tokens: int = 0, experts: str = "default",
              work: Path = Path("/tmp/ocrloop-bench"), progress=print) -> dict[str, Any]:
    """Measure generation at each batch size on the same pages; write ``out`` (JSON) and return it.

    Batch size 1 reads ``single_pages`` pages (its rate is per page); larger sizes read ``pages`` pages.
    The first batch of each size is a warm-up (compilation) and is not timed. With ``profile_tokens``, one more
    generation of that many tokens per batch size runs under the profiler (CUDA): the GPU-busy share of its wall
    time, kernels per token and the most expensive operations, after the timed reads. ``experts="grouped_mm"`` keeps
    MoE experts on grouped GEMMs while decoding, ``padded`` reads each expert's weights once a step (see
    ``ocrloop.models.experts``)."""
    distributed.join_process_group()
    if not distributed.is_main_process():
        distributed.barrier()  # rank 0 writes the pages and the checkpoint; the others then find them
    workspace, checkpoint = prepare(work, family, size, pages + 8, ("receipt", "invoice", "tax_form"))
    if distributed.is_main_process():
        distributed.barrier()
    processes = distributed.world_size()
    dataset = Dataset.open(workspace.config.dataset_dir, workspace.config.data)
    examples = dataset.examples("train")
    continuous = cache_implementation == "continuous"
    if continuous:  # the decoder stops at stop tokens only: a copy that never writes one reads every page to its limit
        checkpoint = never_stopping_copy(checkpoint, work / "checkpoints" / f"{checkpoint.name}-never-stopping", family)
    bundle = load_model(str(checkpoint), backend="hf")
    bundle.model.eval()
    if experts != "default":
        use_experts(bundle.model, experts)
    images = [(example, image) for example, image in dataset.iter_images(examples)]
    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {
        "command": " ".join(["ocrloop bench ocr", *sys.argv[3:]]), "workload": {
            "family": family, "size": size, "resolution": resolution, "cache_implementation": cache_implementation,
            "experts": experts,
            "chars_per_token": chars_per_token, "tokens_per_page": tokens_per_page, "pages": len(images),
            "processes": processes},
        "host": platform.node(), "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, **_versions()}, "batch_sizes": {},
    }

    def timed(work) -> float:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    decoders: dict[tuple[int, int], ContinuousDecoder] = {}

    def page_tokens(chunk) -> int:
        return tokens_per_page or max(math.ceil(len(example.text) / chars_per_token) for example, _ in chunk)

    def read_continuously(chunk) -> tuple[float, float]:
        """Seconds to admit ``chunk`` (preparing and prefilling it: its first token) and to decode the rest, through
        the batch shape's one decoder, as the service keeps one (a second decoder compiles a second step)."""
        tokens = page_tokens(chunk)
        key = (len(chunk), tokens)
        if key not in decoders:
            decoders[key] = ContinuousDecoder(bundle, ReadingSettings(resolution, "markdown", tokens), len(chunk))
        decoder, before = decoders[key], decoders[key].generated_tokens

        def drain() -> None:
            while decoder.active:
                decoder.step()

        admitted = timed(lambda: decoder.admit([bundle.prepare(image, decoder.reading) for _, image in chunk],
                                               list(range(len(chunk)))))
        rest = timed(drain)
        if decoder.generated_tokens - before != tokens * len(chunk):
            raise RuntimeError(f"the never-stopping copy stopped early: {decoder.generated_tokens - before} tokens "
                               f"for {len(chunk)} pages of {tokens}")
        return admitted, rest

    def read(chunk, tokens: int | None = None) -> tuple[float, int]:
        if continuous:
            return sum(read_continuously(chunk)), page_tokens(chunk)
        tokens = tokens or page_tokens(chunk)
        seconds = timed(lambda: bundle.generate([image for _, image in chunk], resolution=resolution, max_new_tokens=tokens,
                                                min_new_tokens=tokens, cache_implementation=cache_implementation))
        return seconds, tokens

    def split(chunk, tokens: int) -> dict[str, float]:
        """Where one batch's time goes: the tower alone, prefill (1 token less the tower), decode per token; and,
        inside prefill, the CPU work of preparing the pages (resizing, normalizing, the prompt's ids)."""
        tower = _vision_seconds(bundle, [image for _, image in chunk], resolution, timed)
        reading = ReadingSettings(resolution=resolution, prompt="markdown", max_new_tokens=tokens)
        started = time.perf_counter()
        for _, image in chunk:
            bundle.prepare(image, reading)
        prepare = time.perf_counter() - started
        if continuous:  # the admission is the first token
            first, rest = read_continuously(chunk)
            whole = first + rest
        else:
            first, _ = read(chunk, 1)
            whole, _ = read(chunk, tokens)
        return {"vision_seconds": tower, "prefill_seconds": max(first - tower, 0.0), "prepare_seconds": prepare,
                "decode_seconds_per_token": (whole - first) / max(tokens - 1, 1), "batch_seconds": whole}

    for batch_size in batch_sizes:
        count = single_pages if batch_size == 1 else math.ceil(pages / batch_size) * batch_size
        # A warm-up batch, then count pages; pages are reused in turn when there are fewer. Each process starts
        # at its own page.
        first = distributed.rank() * count
        order = [images[(first + i) % len(images)] for i in range(count + batch_size)]
        chunks = [order[i:i + batch_size] for i in range(0, count + batch_size, batch_size)]
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        errors: list[str] = []

        def everywhere(work) -> bool:
            """Run ``work``; False in every process when it ran out of memory in any (so all skip the collectives)."""
            try:
                work()
            except torch.OutOfMemoryError as raised:
                errors.append(str(raised).splitlines()[0])
                torch.cuda.empty_cache()
            return distributed.all_succeeded(not errors)

        def measure() -> None:
            nonlocal measured, wall, profile
            distributed.barrier()
            started = time.perf_counter()
            measured = [read(chunk) for chunk in chunks[1:]]
            wall = time.perf_counter() - started
            profile = split(chunks[1], measured[0][1])

        measured, wall, profile = [], 0.0, {}
        # Warm-up (compilation and autotuning; generate's 1-token shape compiles too), then the timed reads.
        warm_up = (lambda: read(chunks[0])) if continuous else (lambda: (read(chunks[0]), read(chunks[0], 1)))
        if not (everywhere(warm_up) and everywhere(measure)):
            results["batch_sizes"][str(batch_size)] = {"status": "out of memory",
                                                       "error": errors[0] if errors else "in another process"}
            continue
        seconds = distributed.slowest(wall)  # from a shared start to the slowest process's end
        read_pages = batch_size * len(measured) * processes
        generated = sum(tokens * batch_size for _, tokens in measured)
        entry = {
            "status": "succeeded", "pages": read_pages, "seconds": seconds, "pages_per_second": read_pages / seconds,
            "seconds_per_batch": seconds / len(measured), "generated_tokens_per_second": generated * processes / seconds,
            "mean_new_tokens_per_page": sum(tokens for _, tokens in measured) / len(measured),
            "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None, "time_split": profile,
        }
        if profile_tokens and cuda:
            entry["profile"] = _profiled(lambda: read(chunks[1], profile_tokens), profile_tokens)
        results["batch_sizes"][str(batch_size)] = entry
        if distributed.is_main_process():
            on = f" on {processes} processes" if processes > 1 else ""
            progress(f"batch {batch_size}{on}: {entry['pages_per_second']:.2f} pages/s, {entry['seconds_per_batch']:.2f} s per "
                     f"batch, {entry['generated_tokens_per_second']:.0f} tokens/s; vision {profile['vision_seconds']:.3f} s, "
                     f"prefill {profile['prefill_seconds']:.3f} s (preparing the pages {profile['prepare_seconds']:.3f} s), decode {profile['decode_seconds_per_token'] * 1000:.1f} ms/token")
            atomic_write_json(out, results)
    if distributed.is_main_process():
        atomic_write_json(out, results)
    distributed.leave_process_group()
    return results


def bench_ocr_processes(out: Path, argv: list[str], processes: tuple[int, ...], progress=print) -> dict[str, Any]:
    """``ocrloop bench ocr`` with flags ``argv`` (without --out and --processes) once per count in ``processes`` (torchrun
    above one), each writing ``OUT-xN.json``; ``out`` gets them all and each count's pages/s over one process's."""
    import subprocess

    merged: dict[str, Any] = {"command": "ocrloop bench ocr " + " ".join(argv) + " --processes "
                              + ",".join(map(str, processes)), "processes": {}, "scaling_vs_one_process": {}}
    for count in processes:
        part = out.with_name(f"{out.stem}-x{count}.json")
        command = [*distributed.launcher(count), "-m", "ocrloop", "bench", "ocr", *argv, "--out", str(part), "--processes", str(count)]
        progress(f"{count} process{'es' if count > 1 else ''}: {' '.join(command[1:])}")
        finished = subprocess.run(command, env=distributed.launch_environment(count))
        merged["processes"][str(count)] = (json.loads(part.read_text()) if part.is_file()
                                           else {"status": "failed", "returncode": finished.returncode})
        one = merged["processes"].get("1", {}).get("batch_sizes", {})
        for batch, entry in merged["processes"][str(count)].get("batch_sizes", {}).items():
            if count > 1 and one.get(batch, {}).get("status") == entry.get("status") == "succeeded":
                ratio = entry["pages_per_second"] / one[batch]["pages_per_second"]
                merged["scaling_vs_one_process"].setdefault(batch, {})[str(count)] = ratio
                progress(f"batch {batch}: {count} processes read {ratio:.2f}x the pages/s of one")
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, merged)
    return merged


@torch.no_grad()
def never_stopping_copy(checkpoint: Path, destination: Path, family: str) -> Path:
    """``checkpoint`` copied to ``destination`` with the output rows of its stop tokens set to zero (random weights
    only: the copy then always generates up to its token limit). Files other than the weights are linked."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    if (destination / "config.json").is_file():
        return destination
    stops = FAMILIES[family]().stop_token_ids(AutoTokenizer.from_pretrained(str(checkpoint)))
    index = checkpoint / "model.safetensors.index.json"
    shards = (json.loads(index.read_text())["weight_map"] if index.is_file()
              else dict.fromkeys(load_file(str(checkpoint / "model.safetensors")), "model.safetensors"))
    # The output projection, or the token embeddings where the two are tied.
    head = next((name for name in shards if name.endswith("lm_head.weight")), None) or \
        next(name for name in shards if name.endswith("embed_tokens.weight"))
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != shards[head] and item.is_file():
            (partial / item.name).symlink_to(item.resolve())
    tensors = load_file(str(checkpoint / shards[head]))
    tensors[head][stops] = torch.zeros_like(tensors[head][stops])
    save_file(tensors, str(partial / shards[head]), metadata={"format": "pt"})
    partial.rename(destination)
    return destination


@torch.no_grad()  # the weights require grad (they are loaded as for training): no graph of 64 pages' activations
def _vision_seconds(bundle, images, resolution: str, timed) -> float:
    """Seconds the vision tower (and projector) takes for ``images`` alone, as generation would run it."""
    from ocrloop.models.base import collate, to_device
    from ocrloop.models.feature_cache import image_feature_owner

    owner = image_feature_owner(bundle)
    if owner is None:
        return float("nan")
    encoded = [bundle.encode(image, "markdown", None, resolution) for image in images]
    batch = to_device(collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer,
                              dtype=bundle.dtype), bundle.device)
    inputs = {key: batch[key] for key in bundle.family.feature_input_keys if key in batch}
    with bundle.family.bounded_vision_memory(bundle.model):
        owner.get_image_features(**inputs, return_dict=True)  # warm
        return timed(lambda: owner.get_image_features(**inputs, return_dict=True))


def _profiled(generate, tokens: int) -> dict[str, Any]:
    """``generate()`` under the profiler: its GPU-busy share, kernels per generated token, top operations."""
    from ocrloop.profiling import summarize_profile

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as profile:
        torch.cuda.synchronize()
        started = time.perf_counter()
        generate()
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    summary = summarize_profile(profile, wall, tokens)
    summary["tokens"] = summary.pop("steps")
    summary["seconds_per_token"] = summary.pop("seconds_per_step")
    summary["kernels_per_token"] = summary.pop("kernels_per_step")
    return summary


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {name: importlib.metadata.version(name) for name in ("transformers",)}
