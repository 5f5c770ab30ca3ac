"""`ocrloop models export`: a trained model becomes one folder of plain transformers weights (the adapter merged)
that transformers loads without ocrloop or peft, and it reads what the model read."""

import json
import shutil
from pathlib import Path

from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model
from ocrloop.registry import Registry
from ocrloop.workspace import Workspace
from tests.conftest import run_cli


def test_an_exported_adapter_is_a_plain_transformers_model_that_reads_the_same(looped_workspace, tmp_path):
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    workspace = tmp_path / "ws"
    shutil.copytree(looped_workspace, workspace)
    config = Workspace.load(workspace).config
    with Registry(config.registry_path) as registry:
        name = registry.champion("*")
        adapter = registry.model(name)["path"]
    assert json.loads((Path(adapter) / "ocrloop_model.json").read_text())["kind"] == "adapter"
    out = tmp_path / "export" / name
    run_cli("models", "export", name, "--out", str(out), "-w", str(workspace), check=True)

    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    assert AutoConfig.from_pretrained(out).model_type == "qwen2_5_vl"
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)  # transformers alone, no peft wrapper
    assert not hasattr(plain, "peft_config") and AutoTokenizer.from_pretrained(out) is not None
    card = json.loads((out / "ocrloop_model.json").read_text())
    assert card["kind"] == "merged" and card["reading"]

    dataset = Dataset.open(config.dataset_dir, config.data)
    images = [image for _, image in dataset.iter_images(dataset.examples("test")[:3])]
    original, exported = load_model(adapter, backend="hf"), load_model(str(out), backend="hf")
    settings = {"prompt": original.reading.prompt, "resolution": original.reading.resolution, "max_new_tokens": 12}
    assert exported.reading == original.reading
    assert exported.generate(images, **settings) == original.generate(images, **settings)


def test_export_refuses_an_existing_folder_and_an_unknown_model_in_one_line(looped_workspace, tmp_path):
    workspace = tmp_path / "ws"
    shutil.copytree(looped_workspace, workspace)
    taken = tmp_path / "taken"
    taken.mkdir()
    with Registry(Workspace.load(workspace).config.registry_path) as registry:
        name = registry.champion("*")
    for args, message in (((name, "--out", str(taken)), "already exists"), (("no-such-model", "--out", str(tmp_path / "x")), "neither")):
        result = run_cli("models", "export", *args, "-w", str(workspace))
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
