"""A model's reading settings travel with it: every reader uses them unless told otherwise, and says so."""

import json
from pathlib import Path

import pytest

from ocrloop.config import DataConfig, OcrloopConfig, apply_overrides
from ocrloop.data.dataset import Dataset
from ocrloop.data.synth import LineOptions, synthesize_lines
from ocrloop.models import load_model
from ocrloop.models.reading import ReadingSettings, resolve_reading
from ocrloop.train.finetune import train
from tests.conftest import run_cli

# What the model memorizes: four single-line images, read at settings no workspace uses by default.
TRAINED_AT = {"resolution": "tiny", "prompt": "ocr", "max_new_tokens": 16}


@pytest.fixture(scope="module")
def memorizer(tiny_presets, tmp_path_factory) -> tuple[Path, Path]:
    """(workspace, model): tiny Qwen2.5-VL fully fine-tuned until it reads its four training lines back
    (measured: exact after 400 steps at 1e-3 and 3e-3, while at 1e-2 it stalls on the text alone; 8 characters
    each, so a model that does not look at the image cannot tell them apart)."""
    workspace = tmp_path_factory.mktemp("memorizer")
    run_cli("init", str(workspace), "--base-model", "tiny-qwen2.5-vl", check=True)
    dataset = workspace / "data" / "ocr_documents"
    synthesize_lines(dataset, LineOptions(n=4, seed=3), DataConfig())
    config = OcrloopConfig(dataset_dir=dataset, registry_path=workspace / "ocrloop.db", models_dir=workspace / "models",
                           base_model="tiny-qwen2.5-vl")
    config = apply_overrides(config, {
        "training.mode": "full", "training.batch_size": 4, "training.gradient_accumulation_steps": 1,
        "training.warmup_steps": 0, "training.learning_rate": 3e-3, "training.max_steps": 400, "training.save_steps": 10_000,
        "training.gradient_checkpointing": False, **{f"training.{k}": v for k, v in TRAINED_AT.items()}})
    output = workspace / "models" / "memorizer"
    train(config, output)
    return workspace, output


def test_the_saved_model_carries_its_reading_settings(memorizer):
    _, model = memorizer
    card = json.loads((model / "ocrloop_model.json").read_text())
    assert card["reading"] == TRAINED_AT
    assert load_model(str(model)).reading == ReadingSettings(**TRAINED_AT)


def test_eval_reads_with_the_models_own_settings_without_flags(memorizer, tmp_path):
    workspace, model = memorizer
    result = run_cli("eval", "-w", str(workspace), "--model", str(model), "--split", "train",
                     "--output", str(tmp_path / "own.json"), check=True)
    assert "note:" not in result.stderr
    assert json.loads((tmp_path / "own.json").read_text())["report"]["overall"]["cer"] == 0.0

    # The workspace's defaults (base, markdown) are what eval used before settings travelled: asked for
    # explicitly, they are used, with one note per difference, and the model no longer reads its lines.
    result = run_cli("eval", "-w", str(workspace), "--model", str(model), "--split", "train", "--resolution", "base",
                     "--prompt", "markdown", "--output", str(tmp_path / "flags.json"), check=True)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 2 and "resolution 'base'" in notes[0] and "'tiny'" in notes[0], notes
    assert json.loads((tmp_path / "flags.json").read_text())["report"]["overall"]["cer"] > 0.2


def test_the_agent_and_both_backends_read_the_same_exact_text(memorizer):
    from ocrloop.agent import OCRAgent

    workspace, model = memorizer
    dataset = Dataset.open(workspace / "data" / "ocr_documents", DataConfig())
    examples = dataset.examples("train")
    images = [dataset.load_image(e) for e in examples]
    agent = OCRAgent.load(workspace, model=str(model))
    assert agent.reading == ReadingSettings(**TRAINED_AT)
    assert agent.read(images) == [e.text for e in examples]
    # A fully fine-tuned model is a whole model on every backend (auto is hf on a machine without CUDA).
    hf = load_model(str(model), backend="hf")
    auto = load_model(str(model), backend="auto")
    assert hf.read(images, hf.reading) == auto.read(images, auto.reading) == [e.text for e in examples]


def test_explicit_settings_win_and_differences_are_named():
    own = ReadingSettings("tiny", "ocr", 16)
    workspace = ReadingSettings("base", "markdown", 1024)
    assert resolve_reading(own, workspace) == (own, [])
    assert resolve_reading(None, workspace, resolution="small") == (ReadingSettings("small", "markdown", 1024), [])
    chosen, notes = resolve_reading(own, workspace, model_name="m1", prompt="ocr", max_new_tokens=64)
    assert chosen == ReadingSettings("tiny", "ocr", 64)
    assert notes == ["reading with max_new_tokens 64, but m1 was trained with 16"]
    assert ReadingSettings.from_json({"resolution": "tiny", "prompt": "ocr"}) is None  # incomplete: not trusted


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl", "tiny-deepseek-ocr-2"])
def test_pages_prepared_in_other_threads_while_the_model_reads_give_the_same_text(tiny_presets, preset):
    """The service prepares pages in request threads while its worker reads earlier ones."""
    from concurrent.futures import ThreadPoolExecutor

    from ocrloop.data.synth import SynthOptions, generate_documents
    from ocrloop.models import load_model
    from ocrloop.models.reading import ReadingSettings

    bundle = load_model(preset, backend="hf")
    reading = ReadingSettings(resolution="small", prompt="ocr", max_new_tokens=10)
    pages = [d.pages[0] for d in generate_documents(SynthOptions(n=12, categories=("receipt", "invoice"), scale=0.4, seed=5))]
    expected = [bundle.read([page], reading)[0] for page in pages]
    with ThreadPoolExecutor(max_workers=4) as pool:
        prepared = [pool.submit(bundle.prepare, page, reading) for page in pages]
        texts = []
        for start in range(0, len(pages), 3):  # reads batches of 3 while the pool still prepares later pages
            texts += bundle.read_prepared([future.result() for future in prepared[start:start + 3]], reading)
    assert texts == expected
