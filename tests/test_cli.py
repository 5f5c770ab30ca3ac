"""The CLI as users run it: a real subprocess, one clear line for every mistake, never a traceback."""

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.conftest import run_cli

COMMANDS = [["init"], ["data", "validate"], ["data", "stats"], ["data", "add"], ["data", "synth"], ["eval"], ["train"],
            ["doctor"], ["ocr"], ["loop", "run"], ["loop", "status"], ["loop", "history"], ["models", "list"],
            ["models", "show"], ["models", "promote"], ["models", "rollback"], ["config", "set"], ["config", "show"],
            ["bench", "train"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command):
    result = run_cli(*command, "--help", check=True)
    assert "Usage:" in result.stdout


def test_workspace_init_synth_validate_stats_eval(tmp_path):
    run_cli("init", str(tmp_path), check=True)
    for expected in ("ocrloop.yaml", "ocrloop.db", "models", "data/ocr_documents/train", "data/ocr_documents/annotations.json"):
        assert (tmp_path / expected).exists(), expected
    again = run_cli("init", str(tmp_path), check=True)
    assert "nothing changed" in again.stdout

    run_cli("data", "synth", "--n", "6", "--seed", "3", "--scale", "0.3", "-w", str(tmp_path), check=True)
    assert "ok: 6 valid documents" in run_cli("data", "validate", "-w", str(tmp_path), check=True).stdout
    stats = json.loads(run_cli("data", "stats", "--json", "-w", str(tmp_path), check=True).stdout)
    assert sum(row["documents"] for row in stats["mix"]) == 6

    annotations = json.loads((tmp_path / "data/ocr_documents/annotations.json").read_text())
    test_entries = [a for a in annotations if a["image"].startswith("test/")]
    perfect = tmp_path / "perfect.jsonl"
    empty = tmp_path / "empty.jsonl"
    perfect.write_text("".join(json.dumps({"image": a["image"], "page": i, "text": t}) + "\n"
                               for a in test_entries for i, t in enumerate(a.get("pages", [a.get("text")]))))
    empty.write_text("")
    result = run_cli("eval", "--predictions", str(perfect), "--compare", str(empty), "--output", str(tmp_path / "r.json"),
                     "-w", str(tmp_path), check=True)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["report"]["overall"]["cer"] == 0.0 and report["before"]["report"]["overall"]["cer"] == 1.0
    assert "-100.0%" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["data", "validate", "-d", "/no/such/dataset"], "dataset folder not found"),
        (["data", "synth", "--n", "2", "--categories", "menu"], "unknown categories"),
        (["data", "synth", "--n", "0"], "n must be at least 1"),
        (["eval", "--predictions", "/no/such.jsonl", "-d", "."], "predictions file not found"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_1(tmp_path, args, fragment):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_malformed_config_is_named(tmp_path):
    (tmp_path / "ocrloop.yaml").write_text("training:\n  batch_size: [\n")
    result = run_cli("data", "stats", "-w", str(tmp_path))
    assert result.returncode == 1 and "malformed YAML" in result.stderr and "Traceback" not in result.stderr


def test_unknown_option_is_a_usage_error(tmp_path):
    result = run_cli("data", "stats", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "No such option" in result.stderr and "Traceback" not in result.stderr


def test_validate_fails_with_a_summary(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotations.json").write_text(json.dumps([{"image": "train/nope.png", "text": "x"}]))
    result = run_cli("data", "validate", "-d", str(root))
    assert result.returncode == 1
    assert "train/nope.png: file not found" in result.stdout
    assert "validation failed: 0 valid documents (0 pages), 1 errors" in result.stderr


def test_add_with_sidecar_text_and_duplicate_refusal(tmp_path):
    from PIL import Image

    run_cli("init", str(tmp_path / "ws"), check=True)
    Image.new("RGB", (50, 50), "red").save(tmp_path / "r.png")
    (tmp_path / "r.md").write_text("**Total:** $1.00")
    args = ("data", "add", str(tmp_path / "r.png"), "--category", "receipt", "--business", "ecommerce", "-w", str(tmp_path / "ws"))
    assert "1 added" in run_cli(*args, check=True).stdout
    assert "0 added, 1 refused" in run_cli(*args, check=True).stdout


def test_train_refuses_a_dataset_that_fails_validation_and_leaves_no_finished_model(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "annotations.json").write_text(json.dumps([{"image": "train/nope.png", "text": "x"}]))
    result = run_cli("train", "-d", str(root), "--model", "tiny-qwen2.5-vl", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "validation error" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "ocrloop_model.json").exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--mode", "qlora4"], "needs a CUDA GPU"),
        (["--mode", "lora3"], "training.mode"),
        (["--model", "/no/such/folder"], "no such folder"),
        (["--backend", "unsloth"], "needs a CUDA GPU and the unsloth package"),
        (["--resolution", "tiny", "--model", "tiny-deepseek-ocr-2"], "resolution 'tiny' is not available for deepseek-ocr-2"),
    ],
)
def test_train_bad_options_are_one_line(synthetic_dataset, tmp_path, flags, fragment):
    args = ["train", "-d", str(synthetic_dataset), "--output", str(tmp_path / "out"), "--max-steps", "1"]
    if "--model" not in flags:
        args += ["--model", "tiny-qwen2.5-vl"]
    result = run_cli(*args, *flags, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("error:") and fragment in lines[-1], lines[-1]


def test_undetectable_family_is_named(tmp_path):
    folder = tmp_path / "weird-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "tokenizer.json").write_text("{}")
    result = run_cli("doctor", "--model", str(folder), cwd=tmp_path)
    assert result.returncode == 1 and "cannot tell the model family from model_type='bert'" in result.stdout


def test_train_then_eval_through_the_cli(tmp_path):
    run_cli("init", str(tmp_path), "--base-model", "tiny-qwen2.5-vl", check=True)
    run_cli("data", "synth", "--n", "6", "--seed", "2", "--scale", "0.3", "--categories", "receipt", "-w", str(tmp_path), check=True)
    trained = run_cli("train", "-w", str(tmp_path), "--output", str(tmp_path / "models/v1"), "--max-steps", "2",
                      "--batch-size", "2", "--resolution", "tiny", "--max-new-tokens", "8", check=True)
    assert "saved" in trained.stdout
    run_cli("eval", "-w", str(tmp_path), "--model", str(tmp_path / "models/v1"), "--compare", "tiny-qwen2.5-vl",
                     "--resolution", "tiny", "--max-new-tokens", "8", "--output", str(tmp_path / "report.json"), check=True)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["report"]["overall"]["pages"] >= 1 and "before" in report
    from ocrloop.registry import Registry

    with Registry(tmp_path / "ocrloop.db") as registry:
        assert [r["status"] for r in registry.runs()] == ["succeeded"]
        assert registry.evaluations()[-1]["model_name"] == "v1"


def test_ocr_reads_the_good_files_and_names_the_bad_one(tmp_path):
    run_cli("init", str(tmp_path), check=True)
    good = tmp_path / "note.png"
    image = Image.new("RGB", (900, 120), "white")
    ImageDraw.Draw(image).text((20, 30), "HELLO 2026", fill="black", font=ImageFont.load_default(48))
    image.save(good)
    Image.new("RGB", (1, 4000), "white").save(tmp_path / "thin.png")
    result = run_cli("ocr", str(good), str(tmp_path / "thin.png"), "--engine", "tesseract", "--format", "json",
                     "-w", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "thin.png: image is 1x4000 pixels: a side is under data.min_page_side" in result.stderr
    assert "1 unreadable" in result.stderr.strip().splitlines()[-1]
    answer = json.loads(result.stdout)  # stdout holds results only: valid JSON
    assert answer["model"].startswith("tesseract") and "HELLO" in answer["pages"][0]["text"]


def test_config_set_takes_negatives_and_lists_and_suggests_names(tmp_path):
    run_cli("init", str(tmp_path), check=True)
    negative = run_cli("config", "set", "training.epochs", "-1", "-w", str(tmp_path))
    assert negative.returncode == 1 and "training.epochs: Input should be greater than 0" in negative.stderr  # a value, not an option
    run_cli("config", "set", "training.lora_targets", "attention,mlp", "-w", str(tmp_path), check=True)
    shown = run_cli("config", "show", "-w", str(tmp_path), check=True).stdout
    assert "- attention\n  - mlp" in shown
    typo = run_cli("config", "set", "training.epoch", "2", "-w", str(tmp_path))
    assert typo.returncode == 1 and "did you mean 'training.epochs'?" in typo.stderr
    assert run_cli("--version", check=True).stdout.startswith("ocrloop ")


def test_extras_are_declared_and_a_missing_one_is_one_line(synthetic_dataset, tmp_path):
    import tomllib

    from ocrloop.extras import GPU_EXTRA, TRACKING_EXTRA

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert [spec.split("==")[0] for spec in extras["gpu"]] == list(GPU_EXTRA)
    assert [spec.split("==")[0] for spec in extras["tracking"]] == list(TRACKING_EXTRA)
    assert all("==" in spec for name in ("gpu", "tracking", "dev") for spec in extras[name])
    result = run_cli("train", "-d", str(synthetic_dataset), "--model", "tiny-qwen2.5-vl", "--output", str(tmp_path / "out"),
                     "--report-to", "tensorboard", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: training.report_to = tensorboard needs the tensorboard package: "
                                                      "pip install 'ocrloop[tracking]', or set training.report_to none")
