"""DeepSeek-OCR (v1) through its remote code, with a tiny remote-code folder the tests write."""

import pytest
from PIL import Image

from ocrloop.config import OcrloopConfig, apply_overrides
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.models import load_model
from ocrloop.models.base import IGNORE_INDEX, ModelError
from ocrloop.train.finetune import train
from tests.conftest import SMALL_PAGES
from tests.models.tiny_remote_code import write_tiny_remote_code_model


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory):
    return write_tiny_remote_code_model(tmp_path_factory.mktemp("remote") / "tiny-deepseek-ocr")


def test_family_is_detected_and_loaded_through_remote_code(remote_model):
    bundle = load_model(str(remote_model))
    assert bundle.family.name == "deepseek-ocr"
    assert type(bundle.model).__name__ == "TinyOcrForCausalLM"  # the folder's own class, not a transformers one


@pytest.mark.parametrize(
    ("resolution", "size", "image_tokens"),
    [
        ("tiny", (900, 1200), 8 * 9 + 1),  # 512 px view: 8 rows of 8 features + newline, + separator
        ("base", (900, 1200), 16 * 17 + 1),
        ("gundam", (300, 400), 16 * 17 + 1),  # small page: no tiles
        ("gundam", (900, 1200), 16 * 17 + 1 + 30 * 21),  # 2 x 3 tiles of 640 px: 30 rows of 20 + newline
    ],
)
def test_image_tokens_follow_the_deepseek_layout(remote_model, resolution, size, image_tokens):
    bundle = load_model(str(remote_model))
    encoded = bundle.encode(Image.new("RGB", size, "white"), "free", "Total: $5", resolution)
    assert encoded.image_tokens == image_tokens
    image_id = bundle.tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == image_tokens
    answer = [label for label in encoded.labels if label != IGNORE_INDEX]
    assert bundle.tokenizer.decode(answer, skip_special_tokens=True) == "Total: $5"
    # The forward accepts the batch and the features fill exactly the image positions.
    from ocrloop.models.base import collate

    batch = collate([encoded], bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer)
    assert batch["images_seq_mask"].sum() == image_tokens
    assert bundle.model(**batch).loss.isfinite()


def test_remote_code_model_trains_saves_and_reloads(remote_model, tmp_path):
    dataset = tmp_path / "ds"
    synthesize_dataset(dataset, SynthOptions(n=5, seed=4, scale=0.3, categories=("receipt",)), SMALL_PAGES)
    config = apply_overrides(
        OcrloopConfig(dataset_dir=dataset, base_model=str(remote_model), data=SMALL_PAGES, registry_path=tmp_path / "r.db"),
        {"training.resolution": "tiny", "training.max_steps": 6, "training.batch_size": 2, "training.gradient_accumulation_steps": 1,
         "training.warmup_steps": 0, "training.learning_rate": 1e-2, "training.max_new_tokens": 12,
         "training.gradient_checkpointing": False, "training.lora_targets": ["attention", "mlp"],
         "training.logging_steps": 1},
    )
    result = train(config, tmp_path / "out")
    losses = [e["loss"] for e in result.card["metrics"]["train_loss_by_epoch"]]
    assert losses[-1] < losses[0]
    image = Image.new("RGB", (300, 400), "white")
    first = load_model(str(tmp_path / "out")).generate([image], resolution="tiny", max_new_tokens=12)
    second = load_model(str(tmp_path / "out")).generate([image], resolution="tiny", max_new_tokens=12)
    assert first == second


def test_remote_code_cannot_be_built_locally():
    from ocrloop.models import FAMILIES

    with pytest.raises(ModelError, match="remote code"):
        FAMILIES["deepseek-ocr"]().random_config("tiny", None)


def _copy_with(remote_model, tmp_path, name, edit_config=None, prepend_code=None):
    import json
    import shutil

    folder = tmp_path / name
    shutil.copytree(remote_model, folder)
    if edit_config:
        config = json.loads((folder / "config.json").read_text())
        edit_config(config)
        (folder / "config.json").write_text(json.dumps(config))
    if prepend_code:
        code = folder / "modeling_tinyocr.py"
        code.write_text(prepend_code + "\n" + code.read_text())
    return folder


def test_remote_code_written_for_an_older_transformers_is_one_clear_error(remote_model, tmp_path):
    # What DeepSeek-OCR v1's published modeling_deepseekv2.py does first: transformers 5 no longer has it.
    folder = _copy_with(remote_model, tmp_path, "old-code",
                        prepend_code="from transformers.models.llama.modeling_llama import LlamaFlashAttention2")
    with pytest.raises(ModelError, match=r"own model code cannot be imported under transformers 5\..*LlamaFlashAttention2"):
        load_model(str(folder), backend="hf")


def test_unknown_remote_code_is_refused_naming_its_type_and_the_known_families(remote_model, tmp_path):
    folder = _copy_with(remote_model, tmp_path, "unknown", edit_config=lambda config: config.update(model_type="mystery_ocr"))
    with pytest.raises(ModelError) as refused:
        load_model(str(folder), backend="hf")
    message = str(refused.value)
    assert "remote code for model_type='mystery_ocr'" in message and "will not run" in message
    assert all(family in message for family in ("deepseek-ocr (", "deepseek-ocr-2 (", "qwen2.5-vl (qwen2_5_vl)"))
