"""A real ``ocrloop serve`` process on a free port, talked to over HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerURL(str):
    process: subprocess.Popen


@contextmanager
def running_server(workspace: Path, *args: str, **serve_settings):
    """Start ``ocrloop serve ARGS`` for ``workspace`` with ``serve_settings`` written to its config; yield its URL
    (a ``ServerURL``: its ``process`` is the server's)."""
    config_path = workspace / "ocrloop.yaml"
    values = yaml.safe_load(config_path.read_text())
    port = free_port()
    values["serve"] = {**values.get("serve", {}), "port": port, **serve_settings}
    config_path.write_text(yaml.safe_dump(values))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    log = (workspace / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "ocrloop", "serve", "-w", str(workspace), *args], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.process = process
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited: {(workspace / 'serve.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not start in 120 s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def served_workspace(looped_workspace, tmp_path) -> Path:
    """A private copy of the looped workspace (its models stay where the loop wrote them)."""
    target = tmp_path / "ws"
    shutil.copytree(looped_workspace, target)
    return target


@pytest.fixture(scope="module")
def server(looped_workspace, tmp_path_factory):
    """One server over a copy of the looped workspace, with small limits for the refusal tests."""
    target = tmp_path_factory.mktemp("served") / "ws"
    shutil.copytree(looped_workspace, target)
    with running_server(target, max_upload_bytes=300_000, max_pages=2, max_image_pixels=1_000_000,
                        max_concurrent_requests=64, max_batch_pages=8, batch_wait_ms=200) as url:
        yield url
