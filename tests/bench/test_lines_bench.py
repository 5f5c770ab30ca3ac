"""bench lines at tiny size: the single-line workload trains end to end and reports its speed."""

import json

from ocrloop.config import DataConfig
from ocrloop.data.dataset import Dataset
from ocrloop.data.synth import LINE_ALPHABET, LineOptions, synthesize_lines
from tests.conftest import run_cli


def test_line_images_have_exact_texts_and_the_asked_splits(tmp_path):
    synthesize_lines(tmp_path / "lines", LineOptions(n=10, seed=4, characters=6, split_fractions=(0.8, 0.2, 0.0)))
    dataset = Dataset.open(tmp_path / "lines", DataConfig())
    assert not dataset.errors
    train, val = dataset.examples("train"), dataset.examples("val")
    assert (len(train), len(val), len(dataset.examples("test"))) == (8, 2, 0)
    assert all(len(e.text) == 6 and set(e.text) <= set(LINE_ALPHABET) for e in train + val)
    assert dataset.load_image(train[0]).size == (448, 112)


def test_bench_lines_writes_its_speed(tiny_presets, tmp_path):
    out = tmp_path / "lines.json"
    run_cli("bench", "lines", "--out", str(out), "--size", "tiny", "--lines", "40", "--batch-size", "8", "--steps", "6",
            "--workers", "0", "--work", str(tmp_path / "work"), check=True)
    results = json.loads(out.read_text())
    assert results["workload"]["steps"] == 6 and results["workload"]["batch_size"] == 8
    assert results["samples_per_second"] > 0 and results["page_check_seconds"] > 0
    assert results["profile"] == {}  # profiling is off unless asked
    assert results["workload"]["compile"] is False and results["compile"] is None  # so is compiling
