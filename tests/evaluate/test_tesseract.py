"""Tesseract, the off-the-shelf yardstick, scored through the same evaluation code."""

import json

from ocrloop.registry import Registry
from tests.conftest import run_cli


def test_eval_engine_tesseract_reads_synthetic_pages(dataset_copy, tmp_path):
    run_cli("init", str(tmp_path / "ws"), check=True)
    out = tmp_path / "tesseract.json"
    result = run_cli("eval", "--engine", "tesseract", "--split", "train", "--strip-markdown", "--dataset", str(dataset_copy),
                     "--output", str(out), "-w", str(tmp_path / "ws"), check=True)
    report = json.loads(out.read_text())
    assert report["evaluated"].startswith("tesseract-5")
    overall = report["report"]["overall"]
    print("tesseract on the test fixture:", overall)
    # A real engine reads these pages; a random model scores about 100% CER.
    assert overall["pages"] >= 8 and overall["cer"] < 0.5
    assert set(report["report"]["by_category"]) >= {"receipt", "invoice"}
    assert "tesseract-5" in result.stdout
    with Registry(tmp_path / "ws" / "ocrloop.db") as registry:
        (recorded,) = registry.evaluations()
    assert recorded["model_name"] == report["evaluated"] and recorded["cer"] == overall["cer"]


def test_eval_needs_exactly_one_source(tmp_path):
    result = run_cli("eval", "--engine", "tesseract", "--model", "tiny-qwen2.5-vl", "-w", str(tmp_path))
    assert result.returncode == 1 and "exactly one of --model, --predictions or --engine" in result.stderr
    result = run_cli("eval", "--engine", "abbyy", "-w", str(tmp_path))
    assert result.returncode == 1 and "unknown --engine 'abbyy'" in result.stderr
