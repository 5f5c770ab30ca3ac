"""Session fixtures: a small synthetic dataset built once and copied per test that modifies it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import yaml

from ocrloop.config import DataConfig
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.workspace import Workspace, init_workspace

SMALL_PAGES = DataConfig(pdf_dpi=40)  # letter pages become 340x440 px: fast to rasterize
# Resolution per tiny preset that keeps CPU steps fast.
FAST_RESOLUTION = {"tiny-deepseek-ocr": "tiny", "tiny-deepseek-ocr-2": "small", "tiny-qwen2.5-vl": "tiny"}


@pytest.fixture(scope="session", autouse=True)
def ocrloop_home(tmp_path_factory):
    """Tiny presets are built once per session into a private folder (never the user's cache)."""
    home = tmp_path_factory.mktemp("ocrloop-home")
    previous = os.environ.get("OCRLOOP_HOME")
    os.environ["OCRLOOP_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("OCRLOOP_HOME", None)
    else:
        os.environ["OCRLOOP_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_presets(ocrloop_home) -> dict[str, Path]:
    """Both tiny presets, built once."""
    from ocrloop.models import TINY_PRESETS, build_preset

    return {name: build_preset(name) for name in TINY_PRESETS}


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """A read-only 12-document dataset with every category, PDFs included. Copy it before writing."""
    root = tmp_path_factory.mktemp("synthetic") / "ocr_documents"
    synthesize_dataset(root, SynthOptions(n=12, seed=7, scale=0.4, noise=0.2), SMALL_PAGES)
    return root


@pytest.fixture
def dataset_copy(synthetic_dataset, tmp_path) -> Path:
    """A private, writable copy of the synthetic dataset."""
    target = tmp_path / "ocr_documents"
    shutil.copytree(synthetic_dataset, target)
    return target


def run_cli(*args: str, cwd: Path | None = None, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ocrloop ARGS`` in a real subprocess, as a user would (a 200-column terminal unless ``env`` says)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "ocrloop", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"ocrloop {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


FAST_TRAINING = {"resolution": "tiny", "max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                 "max_new_tokens": 8, "gradient_checkpointing": False, "save_steps": 1}


def fast_decoding_agent(preset: str, continuous: bool, max_new_tokens: int, name: str | None = None):
    """An ``OCRAgent`` over ``preset`` reading with fast decoding, through a continuous decoder or in batches."""
    from ocrloop.agent import OCRAgent
    from ocrloop.config import OcrloopConfig, apply_overrides
    from ocrloop.models import load_model

    bundle = load_model(preset, backend="hf")
    bundle.enable_fast_decode()
    config = apply_overrides(OcrloopConfig(), {"training.max_new_tokens": max_new_tokens,
                                               "serve.continuous_batching": continuous})
    return OCRAgent(bundle, name or preset, config)


def make_workspace(root: Path, n: int = 10, seed: int = 1, **loop) -> Workspace:
    workspace, _ = init_workspace(root)
    config_path = root / "ocrloop.yaml"
    values = yaml.safe_load(config_path.read_text())
    values["base_model"] = "tiny-qwen2.5-vl"
    values["data"]["pdf_dpi"] = SMALL_PAGES.pdf_dpi
    values["training"].update(FAST_TRAINING)
    values["loop"].update({"new_documents_threshold": 5, "check_drift": False, "min_test_pages": 1, **loop})
    config_path.write_text(yaml.safe_dump(values))
    workspace = Workspace.load(root)
    synthesize_dataset(workspace.config.dataset_dir, SynthOptions(n=n, seed=seed, scale=0.3, categories=("receipt", "invoice")),
                       workspace.config.data)
    return workspace


@pytest.fixture(scope="session")
def looped_workspace(tiny_presets, tmp_path_factory) -> Path:
    """A read-only workspace after two real loop runs (tiny Qwen2.5-VL) and a champion: datasets, runs,
    models, evaluations and decisions in its registry. Copy it before writing."""
    from ocrloop.loop.recipe import FineTuneLoop
    from ocrloop.registry import Registry

    root = tmp_path_factory.mktemp("looped") / "ws"
    workspace = make_workspace(root, n=8)
    FineTuneLoop(workspace).run()
    synthesize_dataset(workspace.config.dataset_dir, SynthOptions(n=6, seed=2, scale=0.3, categories=("receipt",)),
                       workspace.config.data)
    second = FineTuneLoop(Workspace.load(root)).run()
    assert second.ran
    if not second.promoted:  # random tiny models rarely win: promote by hand, as `ocrloop models promote` does
        with Registry(workspace.config.registry_path) as registry:
            registry.record_promotion(second.challenger, "manual", "promoted by hand for the tests")
    return root


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> str:
    """A real PostgreSQL server (Debian's `postgresql`, installed by `make test`) in a temporary folder, on a free
    port of 127.0.0.1, stopped after the session: its base address, ``postgresql://ocrloop@127.0.0.1:PORT``."""
    import glob
    import socket

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    assert binaries, "PostgreSQL is not installed: `make system-packages` installs Debian's postgresql"
    bin_dir = Path(binaries[-1])
    root = tmp_path_factory.mktemp("postgres")
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as Debian's postgres user
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        for parent in root.parents:  # the postgres user must be able to reach its folder
            if parent == Path(tempfile.gettempdir()) or parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o711)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "ocrloop", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
                    "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://ocrloop@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"
