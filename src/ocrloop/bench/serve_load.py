"""``ocrloop bench serve``: is the service as fast as the benchmark?

A real ``ocrloop serve`` on loopback reads synthetic pages for ``clients`` concurrent clients, each sending one page
and sending the next as soon as its answer arrives. The model is ``bench ocr``'s random-weight checkpoint, copied
so that it never stops early: the logit rows of its stop tokens are zero, and among thousands of random logits one
is always higher, so every page generates exactly ``tokens_per_page`` tokens, as ``bench ocr --tokens-per-page``
forces. The first ``warmup_requests`` answers (compilation of each batch shape) are not timed.

Reported: pages/s and generated tokens/s over the timed requests, p50/p99 latency, answers by code, 5xx and lost
answers, the GPU memory in use at its peak (``nvidia-smi``, where present), the batch sizes the service formed (its
``/metrics``), and, given a ``bench ocr`` result, the service's rate over the bench's at the service's batch size.
Random weights measure speed, never accuracy. Bounded: it never runs in CI at full size.
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from ocrloop.atomic import atomic_write_json
from ocrloop.bench.ocr import never_stopping_copy
from ocrloop.bench.soak import _percentile, running_service
from ocrloop.bench.train import prepare
from ocrloop.config import save_config
from ocrloop.data.dataset import Dataset
from ocrloop.errors import OcrloopError


class _GpuMemory:
    """Peak GPU memory in use (MiB, all processes, every device) while running, sampled by ``nvidia-smi``."""

    def __init__(self):
        self.available = shutil.which("nvidia-smi") is not None
        self.before = self.peak = self._used() if self.available else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _used(self) -> int:
        output = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30).stdout
        return sum(int(line) for line in output.split())

    def _sample(self):
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self._used())

    def __enter__(self):
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join()


async def _clients(url: str, pages: list[bytes], requests: int, clients: int, progress) -> list[tuple[int | None, float, float]]:
    """``requests`` page requests from ``clients`` clients; (status or None if lost, start, seconds) each."""
    results: list[tuple[int | None, float, float]] = []
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(session: httpx.AsyncClient):
        for index in next_index:
            started = time.perf_counter()
            try:
                response = await session.post(url + "/v1/ocr", files={"file": ("page.png", pages[index % len(pages)])},
                                              timeout=900)
                code = response.status_code
            except httpx.HTTPError:
                code = None
            results.append((code, started, time.perf_counter() - started))
            progress(len(results))

    async with httpx.AsyncClient(limits=limits) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return results


def _batch_sizes(metrics: str) -> dict[str, float]:
    """The service's ``ocr_batch_pages`` histogram: pages per GPU batch, cumulative counts by bucket."""
    return {line.split('le="')[1].split('"')[0]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("ocr_batch_pages_bucket")}


def bench_serve(out: Path, *, family: str = "deepseek-ocr-2", size: str = "full", resolution: str = "base",
                tokens_per_page: int = 512, clients: int = 64, requests: int = 640, warmup_requests: int = 192,
                max_batch_pages: int = 64, batch_wait_ms: float = 50, fast_decode: bool = True,
                continuous_batching: bool = True, compare_with: Path | None = None, work: Path = Path("/tmp/ocrloop-bench"),
                progress=lambda done, total: None, log=print) -> dict[str, Any]:
    """Load a real service as described in the module docstring; write ``out`` (JSON) and return it."""
    import torch

    workspace, checkpoint = prepare(work, family, size, 32, ("receipt", "invoice", "tax_form"))
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # the checkpoint was built here: keep the memory baseline to this process's context
    model = never_stopping_copy(checkpoint, work / "checkpoints" / f"{family}-{size}-never-stopping", family)
    dataset = Dataset.open(workspace.config.dataset_dir, workspace.config.data)
    pages = []
    for _, image in dataset.iter_images(dataset.examples("train")):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        pages.append(buffer.getvalue())

    config = workspace.config.model_copy(update={
        "base_model": str(model),
        "training": workspace.config.training.model_copy(update={"backend": "hf", "resolution": resolution,
                                                                 "max_new_tokens": tokens_per_page}),
        "serve": workspace.config.serve.model_copy(update={
            "max_batch_pages": max_batch_pages, "batch_wait_ms": batch_wait_ms, "fast_decode": fast_decode,
            "continuous_batching": continuous_batching,
            "max_concurrent_requests": max(clients, workspace.config.serve.max_concurrent_requests)})})
    root = work / f"serve-{family}-{size}"
    root.mkdir(parents=True, exist_ok=True)
    save_config(config, root / "ocrloop.yaml")

    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _GpuMemory() as memory, running_service(root, out.with_suffix(".serve.log"), ready_timeout=1200) as (url, process, ready):
        log(f"service ready after {time.perf_counter() - started:.0f} s; {warmup_requests} warm-up requests")
        total = warmup_requests + requests
        answers = asyncio.run(_clients(url, pages, total, clients, lambda done: progress(done, total)))
        metrics = httpx.get(url + "/metrics", timeout=30).text
        server_rss = psutil.Process(process.pid).memory_info().rss

    # Timed: from the warm-up's last answer to the last request's sending, when every client was still busy (the
    # tail, as clients run out of requests, would count batches the load no longer fills).
    answers.sort(key=lambda answer: answer[1] + answer[2])
    warm_end = answers[warmup_requests - 1][1] + answers[warmup_requests - 1][2] if warmup_requests else \
        min(start for _, start, _ in answers)
    last_sent = max(start for _, start, _ in answers)
    timed = [answer for answer in answers if answer[1] >= warm_end]
    in_window = [answer for answer in answers if answer[0] == 200 and warm_end < answer[1] + answer[2] <= last_sent]
    seconds = last_sent - warm_end
    if not in_window or seconds <= 0:
        raise OcrloopError("no page was answered between the warm-up and the last request; raise --requests")
    ok = [took for code, _, took in timed if code == 200]
    codes = Counter(str(code) for code, _, _ in timed)
    pages_per_second = len(in_window) / seconds
    result: dict[str, Any] = {
        "command": " ".join(["ocrloop bench serve", *sys.argv[3:]]),
        "host": platform.node(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"torch": torch.__version__},
        "workload": {"family": family, "size": size, "resolution": resolution, "tokens_per_page": tokens_per_page,
                     "clients": clients, "requests": requests, "warmup_requests": warmup_requests,
                     "max_batch_pages": max_batch_pages, "batch_wait_ms": batch_wait_ms, "fast_decode": fast_decode,
                     "continuous_batching": continuous_batching, "pii_policy": config.serve.pii_policy},
        "model": ready.get("model"), "timed_requests": len(timed), "seconds": seconds, "pages_in_window": len(in_window),
        "pages_per_second": pages_per_second, "generated_tokens_per_second": pages_per_second * tokens_per_page,
        "latency_seconds": {"p50": _percentile(ok, 50), "p99": _percentile(ok, 99), "max": max(ok, default=0.0)},
        "answers": dict(codes),
        "server_errors": sum(count for code, count in codes.items() if code.startswith("5")),
        "lost_answers": codes.get("None", 0),
        "gpu_memory_used_mib": ({"before": memory.before, "peak": memory.peak, "service_peak": memory.peak - memory.before}
                                if memory.available else None),
        "server_rss_bytes": server_rss,
        "batch_pages_histogram": _batch_sizes(metrics),
    }
    if compare_with is not None:
        bench = json.loads(Path(compare_with).read_text())["batch_sizes"]
        same = bench.get(str(max_batch_pages), {}).get("pages_per_second")
        best = max((entry.get("pages_per_second") or 0.0) for entry in bench.values())
        result["bench_ocr"] = {"file": str(compare_with), "pages_per_second_at_max_batch_pages": same,
                               "best_pages_per_second": best,
                               "service_over_bench_at_max_batch_pages": pages_per_second / same if same else None,
                               "service_over_best_bench": pages_per_second / best if best else None}
    atomic_write_json(out, result)
    return result
