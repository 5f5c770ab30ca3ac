"""The training benchmark's mechanics at tiny size (what it measures is for the GPU, not for tests)."""

import json

import pytest

from ocrloop.serve.metrics import ServiceMetrics
from tests.conftest import run_cli


def test_bench_train_runs_each_variant_in_its_own_process_and_writes_ratios(tiny_presets, tmp_path):
    out = tmp_path / "results" / "bench.json"
    run_cli("init", str(tmp_path / "ws"), check=True)
    result = run_cli("bench", "train", "--out", str(out), "--family", "qwen2.5-vl", "--size", "tiny", "--resolution", "tiny",
                     "--batch-size", "2", "--steps", "6", "--lora-targets", "attention,mlp", "--work", str(tmp_path / "work"),
                     "-w", str(tmp_path / "ws"), "--profile-steps", "2", check=True)
    payload = json.loads(out.read_text())
    variants = payload["variants"]
    assert set(variants) == {"baseline", "ocrloop"} and all(v["status"] == "succeeded" for v in variants.values())
    assert "--optimizer adamw_torch" in variants["baseline"]["command"] and "--cudnn-attention" in variants["baseline"]["command"]
    assert all(isinstance(v["compiled_kernels_before"], int) for v in variants.values())
    # Two steps from the middle of each run were profiled (training.profile_steps): the host's costliest operations;
    # the GPU's share only on a GPU.
    for variant in variants.values():
        profile = variant["profile"]
        assert profile["steps"] == 2 and profile["seconds_per_step"] > 0 and "aten::" in profile["top_by_cpu_time"]
        assert profile["gpu_busy_fraction"] is None and profile["top_by_gpu_time"] is None
    ocrloop = variants["ocrloop"]
    assert ocrloop["same_trainable_parameters_as_baseline"] is True
    assert ocrloop["speedup_vs_baseline"] > 0 and len(ocrloop["train_loss_by_epoch"]) >= 1
    assert (tmp_path / "results" / "bench-baseline.log").is_file()
    assert "baseline (hf)" in result.stdout
    # Recorded in the workspace's registry, so the service's /metrics shows the measured ratios.
    exposition = ServiceMetrics(tmp_path / "ws" / "ocrloop.db", "tiny-qwen2.5-vl").exposition().decode()
    assert f"ocr_training_speed_multiplier {ocrloop['speedup_vs_baseline']}" in exposition


def test_bench_train_refuses_unknown_variants(tmp_path):
    result = run_cli("bench", "train", "--out", str(tmp_path / "b.json"), "--variants", "baseline,turbo", "--size", "tiny")
    assert result.returncode == 1 and "unknown variants ['turbo']" in result.stderr


def test_bench_train_runs_a_variant_on_one_and_two_processes_and_compares_them(tiny_presets, tmp_path):
    out = tmp_path / "scaling.json"
    run_cli("bench", "train", "--out", str(out), "--family", "qwen2.5-vl", "--size", "tiny", "--resolution", "tiny",
            "--batch-size", "2", "--epochs", "1", "--pages", "8", "--lora-targets", "attention,mlp", "--variants", "ocrloop-hf",
            "--processes", "1,2,1", "--work", str(tmp_path / "work"), check=True, env={"OMP_NUM_THREADS": "1"})
    results = json.loads(out.read_text())
    variants = results["variants"]
    one, two, again = variants["ocrloop-hf"], variants["ocrloop-hf@2"], variants["ocrloop-hf#2"]
    assert one["status"] == two["status"] == again["status"] == "succeeded", two.get("error")
    assert (one["processes"], two["processes"]) == (1, 2) and "torch.distributed.run" in two["command"]
    # The same 8 pages for one epoch: 4 steps of 2 pages on one process, 2 steps of 2x2 on two.
    assert (one["train_pages"], two["train_pages"]) == (8, 8) and (one["steps"], two["steps"]) == (4, 2)
    # a count may repeat: the ratio is over the median of the one-process runs
    single = (one["whole_run_samples_per_second"] + again["whole_run_samples_per_second"]) / 2
    assert two["scaling_vs_one_process"] == pytest.approx(two["whole_run_samples_per_second"] / single)
    assert results["scaling_medians"] == {"ocrloop-hf@2": pytest.approx(two["scaling_vs_one_process"])}
    assert two["same_backend_as_one_process"] is True
