"""Training launched as several processes (torchrun, gloo on the CPU) is the same training as one process on the
same global batch, and it leaves one registry row, one run card and one model: rank 0 writes them."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ocrloop.config import DataConfig
from ocrloop.data.synth import LineOptions, synthesize_lines
from tests.conftest import run_cli

# 8 lines, global batch 4: every step of both runs sees the same 4 lines (no short last batch to pad).
TRAINING = ["--resolution", "tiny", "--prompt", "ocr", "--max-steps", "4", "--gradient-accumulation-steps", "1",
            "--lora-dropout", "0", "--logging-steps", "1", "--learning-rate", "0.01", "--warmup-steps", "0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(workspace: Path, *launcher: str, output: str, batch_size: int, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "ocrloop", "train", *TRAINING,
               "--batch-size", str(batch_size), "--output", output, "-w", str(workspace), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


@pytest.fixture(scope="module")
def workspace(tiny_presets, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distributed") / "ws"
    run_cli("init", str(root), "--base-model", "tiny-qwen2.5-vl", check=True)
    synthesize_lines(root / "data" / "ocr_documents", LineOptions(n=8, seed=3), DataConfig())
    run_cli("train", *TRAINING, "--batch-size", "4", "--output", str(root / "models" / "one"), "-w", str(root), check=True)
    return root


def _same_training(workspace: Path, output: str) -> None:
    one, many = (json.loads((workspace / "models" / name / "run_card.json").read_text()) for name in ("one", output))
    losses = [loss for _, loss in one["metrics"]["loss_by_step"]]
    assert [loss for _, loss in many["metrics"]["loss_by_step"]] == pytest.approx(losses, rel=1e-5)
    a, b = (load_file(str(workspace / "models" / name / "adapter_model.safetensors")) for name in ("one", output))
    difference = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt() / sum((a[k] ** 2).sum() for k in a).sqrt()
    assert difference < 1e-4 and torch.cat([t.flatten() for t in a.values()]).abs().max() > 0.01  # it moved, identically


def _rows(workspace: Path, output: str) -> tuple[int, int]:
    with sqlite3.connect(workspace / "ocrloop.db") as db:
        runs = db.execute("SELECT COUNT(*) FROM runs WHERE config_json LIKE ?", (f"%models/{output}%",)).fetchone()[0]
        models = db.execute("SELECT COUNT(*) FROM models WHERE path LIKE ?", (f"%/{output}",)).fetchone()[0]
    return runs, models


def test_two_processes_train_like_one_on_the_same_global_batch_and_rank_0_alone_writes(workspace):
    stdout = _finished(_torchrun(workspace, "--nproc-per-node", "2", "--master-port", str(_free_port()),
                                 output=str(workspace / "models" / "two"), batch_size=2))
    _same_training(workspace, "two")
    assert _rows(workspace, "two") == (1, 1)
    assert stdout.count("saved ") == 1  # one report, from rank 0
    # The feature pass was shared: rank 0 computed every other page and read the rest from the shared folder.
    cache = json.loads((workspace / "models" / "two" / "run_card.json").read_text())["feature_cache"]
    assert (cache["computed"], cache["loaded_from_disk"], cache["entries"]) == (4, 4, 8) and cache["exchange_seconds"] > 0
    assert len(list((workspace / "models" / "two" / "feature_cache").glob("*.safetensors"))) == 8


def test_the_gpus_flag_starts_the_same_run_through_torchrun(workspace):
    result = run_cli("train", *TRAINING, "--batch-size", "2", "--gpus", "2", "--output", str(workspace / "models" / "gpus"),
                     "-w", str(workspace), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    _same_training(workspace, "gpus")
    assert _rows(workspace, "gpus") == (1, 1) and result.stdout.count("saved ") == 1
    assert json.loads((workspace / "models" / "gpus" / "run_card.json").read_text())["speed"]["processes"] == 2


def test_a_page_refused_in_the_shared_page_check_stops_every_process_with_its_reason(workspace):
    """Each process checks only its share of the pages: one process's refusal must reach the others (no hang)."""
    process = _torchrun(workspace, "--nproc-per-node", "2", "--master-port", str(_free_port()),
                        output=str(workspace / "models" / "refused"), batch_size=2, extra=("--max-seq-length", "64"))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    # Each process says it in one line (torchrun then prints its own summary of the failed processes).
    assert stderr.count("error: train/line_s3_000000.png page 1: 99 tokens (64 image + 35 text) exceed max_seq_length=64") == 2
    assert "ocrloop/train/" not in stderr  # no traceback from ocrloop's code
    assert not (workspace / "models" / "refused" / "run_card.json").exists()


def test_two_nodes_on_one_host_are_the_same_command_with_a_rendezvous_address(workspace):
    port = _free_port()
    nodes = [_torchrun(workspace, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                       "--master-addr", "127.0.0.1", "--master-port", str(port),
                       output=str(workspace / "models" / "nodes"), batch_size=2) for node in (0, 1)]
    outputs = [_finished(node) for node in nodes]
    _same_training(workspace, "nodes")
    assert _rows(workspace, "nodes") == (1, 1)
    assert outputs[0].count("saved ") == 1 and "saved " not in outputs[1]


def test_the_loop_under_torchrun_runs_once_and_every_process_trains(tiny_presets, tmp_path):
    from ocrloop.registry import Registry
    from tests.conftest import make_workspace

    workspace = make_workspace(tmp_path / "ws", n=8)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                             str(_free_port()), "-m", "ocrloop", "loop", "run", "-w", str(tmp_path / "ws")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with Registry(workspace.config.registry_location) as registry:
        assert [r["status"] for r in registry.runs("loop")] == ["succeeded"]  # the loop ran once, on rank 0
        assert [r["status"] for r in registry.runs("train")] == ["succeeded"]
        challengers = [m for m in registry.models() if m["family"] != "base"]
    assert len(challengers) == 1
    cache = json.loads((Path(challengers[0]["path"]) / "run_card.json").read_text())["feature_cache"]
    # Both processes took part: rank 0 computed only its share of the pages, and read the other's.
    assert 0 < cache["computed"] < cache["entries"] and cache["computed"] + cache["loaded_from_disk"] == cache["entries"]
    assert result.stdout.count("general:") == 1  # one decision, reported once


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="which GPU a launched process loads onto: needs two CUDA GPUs")
def test_a_launched_process_loads_onto_its_own_gpu(monkeypatch, tiny_presets):
    # Found on two H200s: every process put its model and page features on GPU 0 until the Trainer moved the model.
    from ocrloop.models import load_model

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    bundle = load_model("tiny-qwen2.5-vl", backend="hf")
    assert bundle.device == torch.device("cuda", 1) and torch.cuda.current_device() == 1


def test_a_validation_that_ends_training_ends_it_in_every_process(tiny_presets, tmp_path):
    """Only rank 0 validates; the other process must stop at the same step, or it waits in the next all-reduce."""
    root = tmp_path / "ws"
    run_cli("init", str(root), "--base-model", "tiny-qwen2.5-vl", check=True)
    synthesize_lines(root / "data" / "ocr_documents", LineOptions(n=10, seed=4, split_fractions=(0.8, 0.2, 0.0)), DataConfig())
    _finished(_torchrun(root, "--nproc-per-node", "2", "--master-port", str(_free_port()), output=str(root / "models" / "stopped"),
                        batch_size=2, extra=("--eval-steps", "2", "--stop-at-validation-cer", "100", "--max-new-tokens", "8")))
    card = json.loads((root / "models" / "stopped" / "run_card.json").read_text())
    assert card["speed"]["steps"] == 2 and card["metrics"]["validation"][0]["step"] == 2


def test_a_time_budget_ends_training_at_the_same_step_in_every_process(workspace):
    """Rank 0 times the steps and decides where to end; the other process must end at that step too, or one waits in
    an all-reduce the other never joins. 1 ms is spent before the first cut (step 4 of 40, a tenth), on any machine."""
    output = workspace / "models" / "budget"
    _finished(_torchrun(workspace, "--nproc-per-node", "2", "--master-port", str(_free_port()), output=str(output),
                        batch_size=2, extra=("--max-steps", "40", "--max-train-seconds", "0.001")))
    card = json.loads((output / "run_card.json").read_text())
    assert card["speed"]["steps"] == 4 and card["speed"]["processes"] == 2
    assert card["speed"]["time_budget"]["cuts"] == [{"at_step": 4, "end": 4}]


def test_batches_grouped_by_length_train_under_torchrun(workspace):
    """Every process draws the same length-grouped order (seed and epoch alone decide it) and accelerate hands each its
    share of the batches: were the orders different, pages would be seen twice or never, silently; this run is the
    check that the sampler goes through accelerate's sharding and epochs at all."""
    output = workspace / "models" / "grouped"
    _finished(_torchrun(workspace, "--nproc-per-node", "2", "--master-port", str(_free_port()), output=str(output),
                        batch_size=2, extra=("--group-by-length", "--max-steps", "6")))
    card = json.loads((output / "run_card.json").read_text())
    assert card["speed"]["steps"] == 6 and card["config"]["training"]["group_by_length"] is True
