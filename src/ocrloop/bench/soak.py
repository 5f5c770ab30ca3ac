"""``ocrloop bench soak``: many connections of valid and hostile requests against a real ``ocrloop serve``.

It starts the service for a workspace on a loopback port, waits until ``/readyz`` says a page was read,
then sends ``requests`` requests from ``connections`` concurrent connections, cycling through a fixed
mix of valid documents and hostile inputs, each with the answers it may get. It samples the server's
resident memory as it goes and reports: answers by kind and code, unexpected answers, 5xx, lost
answers (no response at all), throughput, p50/p99 latency, and whether RSS stayed flat (within
``rss_tolerance`` of its level after the first tenth of the run). Bounded: it never runs in CI.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
from PIL import Image, ImageDraw

from ocrloop.atomic import atomic_write_json
from ocrloop.errors import OcrloopError


@dataclass(frozen=True)
class RequestKind:
    name: str
    expected: frozenset[int]
    files: dict | None = None
    content: bytes | None = None
    params: dict | None = None
    headers: dict | None = None
    valid: bool = False


def _png(width: int, height: int, text: str = "") -> bytes:
    image = Image.new("RGB", (width, height), "white")
    if text:
        ImageDraw.Draw(image).text((10, height // 3), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pdf(pages: int) -> bytes:
    images = [Image.new("RGB", (200, 260), (255, 255, 255 - 20 * i)) for i in range(pages)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def request_mix(max_upload_bytes: int) -> list[RequestKind]:
    """The cycle of requests: about half valid documents, half hostile inputs."""
    page = _png(320, 240, "TOTAL 12.50")
    truncated = _png(300, 300, "X")[:120]
    return [
        RequestKind("png", frozenset({200}), files={"file": ("page.png", page)}, valid=True),
        RequestKind("pdf-2-pages", frozenset({200}), files={"file": ("doc.pdf", _pdf(2))}, valid=True),
        RequestKind("raw-body-md", frozenset({200}), content=page, headers={"content-type": "image/png"},
                    params={"format": "md"}, valid=True),
        RequestKind("png-redact", frozenset({200}), files={"file": ("p.png", page)}, params={"pii_policy": "redact"}, valid=True),
        RequestKind("garbage", frozenset({415}), files={"file": ("x.bin", os.urandom(2048))}),
        RequestKind("truncated-png", frozenset({422}), files={"file": ("t.png", truncated)}),
        RequestKind("thin-page", frozenset({422}), files={"file": ("thin.png", _png(1, 4000))}),
        RequestKind("over-limit", frozenset({413}), content=b"\x89PNG\r\n\x1a\n" + b"0" * (max_upload_bytes + 70_000),
                    headers={"content-type": "image/png"}),
        RequestKind("unknown-option", frozenset({422}), files={"file": ("p.png", page)}, params={"pii-policy": "reject"}),
        RequestKind("unknown-business", frozenset({422}), files={"file": ("p.png", page)}, params={"business": "nobody-xyz"}),
        RequestKind("empty", frozenset({422}), content=b"", headers={"content-type": "image/png"}),
        RequestKind("malformed-multipart", frozenset({400, 422}), content=b"--b\r\nbroken",
                    headers={"content-type": "multipart/form-data; boundary=b"}),
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OcrloopError(f"the service exited with code {process.returncode}; see its log")
        try:
            ready = httpx.get(url + "/readyz", timeout=5)
            if ready.status_code == 200:
                return ready.json()
            if "loading" not in ready.json().get("error", "loading"):
                raise OcrloopError(f"the service is not ready: {ready.json()['error']}")
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise OcrloopError(f"the service was not ready after {timeout:.0f} s")


@contextmanager
def running_service(workspace: Path, log_path: Path, engine: str = "model",
                    ready_timeout: float = 600) -> Iterator[tuple[str, subprocess.Popen, dict]]:
    """``ocrloop serve`` for ``workspace`` on a free loopback port, its output in ``log_path``: ``(url, process,
    /readyz answer)`` once it has read a page; stopped on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "ocrloop", "serve", "-w", str(workspace), "--port", str(port),
                                    "--engine", engine], stdout=log, stderr=subprocess.STDOUT)
        try:
            yield url, process, _wait_ready(url, process, ready_timeout)
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


async def _run_load(url: str, kinds: list[RequestKind], requests: int, connections: int, server: psutil.Process,
                    progress) -> dict[str, Any]:
    results: list[tuple[str, int | None, float]] = []
    rss: list[tuple[int, int]] = []
    next_index = iter(range(requests))
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async def worker(client: httpx.AsyncClient):
        for index in next_index:
            kind = kinds[index % len(kinds)]
            started = time.perf_counter()
            try:
                response = await client.post(url + "/v1/ocr", files=kind.files, content=kind.content, params=kind.params,
                                             headers=kind.headers, timeout=300)
                code = response.status_code
            except httpx.HTTPError:
                code = None  # no answer: lost
            results.append((kind.name, code, time.perf_counter() - started))
            progress(len(results))

    async def sample_memory():
        while len(results) < requests:
            rss.append((len(results), server.memory_info().rss))
            await asyncio.sleep(0.5)
        rss.append((len(results), server.memory_info().rss))

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits) as client:
        await asyncio.gather(sample_memory(), *(worker(client) for _ in range(connections)))
    return {"results": results, "rss": rss, "seconds": time.perf_counter() - started}


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0.0])[0]


def bench_soak(workspace: Path, out: Path, *, requests: int = 5000, connections: int = 16, engine: str = "model",
               rss_tolerance: float = 0.10, progress=lambda done: None) -> dict[str, Any]:
    """Run the soak against a service started for ``workspace``; write the result JSON (and a PNG) to ``out``."""
    from ocrloop.workspace import Workspace

    config = Workspace.load(workspace).config
    kinds = request_mix(config.serve.max_upload_bytes)
    by_name = {kind.name: kind for kind in kinds}
    out.parent.mkdir(parents=True, exist_ok=True)
    with running_service(Path(workspace), out.with_suffix(".serve.log"), engine) as (url, process, ready):
        load = asyncio.run(_run_load(url, kinds, requests, connections, psutil.Process(process.pid), progress))
        # /readyz answers 503 by design while the model loads (the wait above polled it): not an error.
        server_errors_in_metrics = sum(float(line.split()[-1]) for line in httpx.get(url + "/metrics").text.splitlines()
                                       if line.startswith("ocr_requests_total") and 'code="5' in line
                                       and 'route="/readyz"' not in line)

    results, rss = load["results"], load["rss"]
    codes = Counter((name, code) for name, code, _ in results)
    # 429 is a right answer for any request: the service sheds what exceeds serve.max_concurrent_requests.
    unexpected = {f"{name} -> {code}": count for (name, code), count in codes.items()
                  if code is not None and code not in by_name[name].expected | {429}}
    latencies = [seconds for _, code, seconds in results if code is not None]
    valid = [seconds for name, code, seconds in results if code == 200 and by_name[name].valid]
    warm = next((value for done, value in rss if done >= requests // 10), rss[0][1])
    end, peak = rss[-1][1], max(value for _, value in rss)
    result = {
        "workspace": Path(workspace).resolve().name, "base_model": config.base_model, "engine": engine, "model": ready["model"], "requests": requests,
        "connections": connections, "seconds": round(load["seconds"], 2),
        "requests_per_second": round(len(results) / load["seconds"], 2),
        "valid_pages_per_second": round(sum(2 if name == "pdf-2-pages" else 1 for name, code, _ in results
                                            if code == 200) / load["seconds"], 2),
        "latency_seconds": {"p50": round(_percentile(latencies, 50), 4), "p99": round(_percentile(latencies, 99), 4),
                            "valid_p50": round(_percentile(valid, 50), 4), "valid_p99": round(_percentile(valid, 99), 4)},
        "answers": {f"{name} {code}": count for (name, code), count in sorted(codes.items(), key=str)},
        "unexpected_answers": unexpected,
        "server_errors": sum(count for (_, code), count in codes.items() if code is not None and code >= 500),
        "server_errors_in_metrics": server_errors_in_metrics,
        "lost_answers": sum(count for (_, code), count in codes.items() if code is None),
        "rss_bytes": {"after_first_tenth": warm, "end": end, "peak": peak,
                      "end_vs_after_first_tenth": round(end / warm - 1, 4)},
        "rss_samples": rss,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    result["passed"] = {
        "no_5xx": result["server_errors"] == 0 and server_errors_in_metrics == 0,
        "no_lost_answers": result["lost_answers"] == 0,
        "only_expected_answers": not unexpected,
        "flat_rss": abs(end / warm - 1) <= rss_tolerance and peak / warm - 1 <= rss_tolerance,
    }
    atomic_write_json(out, result)
    _plot(result, out.with_suffix(".png"))
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done, rss = zip(*result["rss_samples"])
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.plot(done, [value / 2**20 for value in rss])
    warm = result["rss_bytes"]["after_first_tenth"] / 2**20
    axis.axhspan(warm * 0.9, warm * 1.1, color="green", alpha=0.1, label="±10 % of the level after the first tenth")
    axis.set_xlabel("requests answered")
    axis.set_ylabel("server RSS (MiB)")
    axis.set_title(f"soak: {result['requests']} requests, {result['connections']} connections, "
                   f"{result['requests_per_second']} req/s")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
