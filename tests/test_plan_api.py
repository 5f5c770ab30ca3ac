"""The plan's Python API and OCRAgent, as code written against the plan would call them."""

import asyncio
import json

from ocrloop.plan_api import DeepSeekOCRFineTuner, OCRAgent, OCRFineTuneLoop
from tests.conftest import run_cli
from tests.conftest import make_workspace


def test_the_plans_fine_tuner_trains_and_the_agent_reads(tiny_presets, tmp_path):
    workspace = make_workspace(tmp_path / "ws", n=6)
    tuner = DeepSeekOCRFineTuner(model_name="tiny-qwen2.5-vl", load_in_4bit=False, workspace=tmp_path / "ws")
    dataset = tuner.prepare_dataset(workspace.config.dataset_dir, workspace.config.dataset_dir / "annotations.json")
    output = tuner.train(dataset, output_dir=str(tmp_path / "ws/models/v1"), num_train_epochs=1, batch_size=2,
                         learning_rate=2e-4, max_steps=2, resolution="tiny", max_new_tokens=8)
    assert (tmp_path / "ws/models/v1/ocrloop_model.json").is_file() and output.endswith("v1")

    agent = OCRAgent.load(tmp_path / "ws", model=output)
    page = next(iter(dataset.examples("test")))
    result = asyncio.run(agent.process_document(dataset.root / page.source))
    assert result["model"] == output and len(result["pages"]) >= 1 and isinstance(result["text"], str)


def test_the_plans_loop_api(tiny_presets, tmp_path):
    make_workspace(tmp_path / "ws", n=8)
    loop = OCRFineTuneLoop(workspace=tmp_path / "ws")
    mix = loop.analyze_document_mix()
    assert set(mix) == {"receipt", "invoice"} and sum(mix.values()) == 8
    assert loop.should_retrain() is True  # first run
    result = loop.run()
    assert result.ran
    assert loop.should_retrain(threshold=1) is False  # nothing new since
    forced = loop.train_new_version()
    assert forced.ran and [t.name for t in forced.triggers] == ["forced"]


def test_ocr_command_uses_the_champion_and_resumes(tiny_presets, tmp_path):
    workspace = make_workspace(tmp_path / "ws", n=6)
    scans = workspace.config.dataset_dir / "test"
    out = tmp_path / "out"
    run_cli("ocr", str(scans), "--format", "json", "--out", str(out), "-w", str(tmp_path / "ws"), check=True)
    written = sorted(out.glob("*.json"))
    assert written and json.loads(written[0].read_text())["model"] == "base:tiny-qwen2.5-vl"
    again = run_cli("ocr", str(scans), "--format", "json", "--out", str(out), "-w", str(tmp_path / "ws"), check=True)
    assert f"{len(written)} already done" in again.stderr and again.stdout == ""
    missing = run_cli("ocr", str(tmp_path / "nope.png"), "-w", str(tmp_path / "ws"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
