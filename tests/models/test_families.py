import json
import shutil

import pytest
import torch
from PIL import Image

from ocrloop.models import FAMILIES, build_preset, detect_family, load_model
from ocrloop.models.base import IGNORE_INDEX, ModelError
from ocrloop.models.loading import attach_lora, trainable_parameters
from tests.conftest import FAST_RESOLUTION

PRESETS = list(FAST_RESOLUTION)


@pytest.fixture(scope="module")
def page():
    image = Image.new("RGB", (340, 440), "white")
    return image


@pytest.mark.parametrize("preset", PRESETS)
def test_labels_cover_only_the_answer(tiny_presets, preset, page):
    bundle = load_model(preset)
    encoded = bundle.encode(page, "markdown", "**Total:** $5.00", FAST_RESOLUTION[preset])
    image_token_id = bundle.tokenizer.convert_tokens_to_ids(bundle.family.image_token)
    assert encoded.input_ids.count(image_token_id) == encoded.image_tokens > 0
    answer_positions = [i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX]
    assert answer_positions == list(range(len(encoded) - len(answer_positions), len(encoded)))
    answer = [encoded.labels[i] for i in answer_positions]
    assert bundle.tokenizer.decode(answer, skip_special_tokens=True) == "**Total:** $5.00"
    assert answer[-1] in bundle.family.stop_token_ids(bundle.tokenizer)
    # No image token is ever a learning target.
    assert image_token_id not in answer


def test_family_is_detected_from_config_not_name(tiny_presets, tmp_path):
    renamed = tmp_path / "qwen-looking-name"
    shutil.copytree(tiny_presets["tiny-deepseek-ocr-2"], renamed)
    assert load_model(str(renamed)).family.name == "deepseek-ocr-2"
    with pytest.raises(ModelError, match="cannot tell the model family from model_type='llama'"):
        detect_family({"model_type": "llama"})


@pytest.mark.parametrize(
    ("remove", "message"),
    [("config.json", "missing config.json"), ("model.safetensors", "no weights"), ("tokenizer.json", "no tokenizer files")],
)
def test_model_folder_with_missing_files_is_a_clear_error(tiny_presets, tmp_path, remove, message):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_presets["tiny-qwen2.5-vl"], broken)
    (broken / remove).unlink()
    if remove == "tokenizer.json":
        (broken / "tokenizer_config.json").unlink()
    with pytest.raises(ModelError, match=message):
        load_model(str(broken))


def test_unknown_source_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="hf download"):
        load_model("no-such-org/no-such-model")


def test_quantized_modes_need_cuda(tiny_presets):
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        load_model("tiny-qwen2.5-vl", mode="qlora4", device="cpu")


def test_unsupported_resolution_is_named(tiny_presets, page):
    bundle = load_model("tiny-deepseek-ocr-2")
    with pytest.raises(ModelError, match="resolution 'tiny' is not available for deepseek-ocr-2"):
        bundle.encode(page, "markdown", "x", "tiny")


def test_presets_are_deterministic(tiny_presets, tmp_path):
    again = build_preset("tiny-qwen2.5-vl", destination=tmp_path / "again")
    first = load_model(str(tiny_presets["tiny-qwen2.5-vl"])).model.state_dict()
    second = load_model(str(again)).model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_each_family_builds_only_the_random_presets_it_has(tmp_path):
    from ocrloop.models.tokenizer import build_tiny_tokenizer

    qwen = FAMILIES["qwen2.5-vl"]()
    tokenizer = build_tiny_tokenizer(qwen.special_tokens())
    widths = {size: (qwen.random_config(size, tokenizer).vision_config.hidden_size,
                     qwen.random_config(size, tokenizer).text_config.num_hidden_layers) for size in ("tiny", "small", "medium")}
    assert widths["tiny"] < widths["small"] < widths["medium"]  # wider vision and deeper decoder, size by size
    # A DeepSeek family has no small reader: asking for one is refused in one line, not built as the tiny one.
    with pytest.raises(ModelError, match="deepseek-ocr-2 has no 'small' preset; use tiny, full"):
        FAMILIES["deepseek-ocr-2"]().build_random(tmp_path / "small", size="small")
    assert not (tmp_path / "small").exists()


@pytest.mark.parametrize(
    ("preset", "groups", "must_train", "must_not_train"),
    [
        ("tiny-deepseek-ocr-2", ["attention"], "self_attn", "vision_tower"),
        ("tiny-deepseek-ocr-2", ["experts"], "experts", "self_attn"),
        ("tiny-deepseek-ocr-2", ["vision"], "vision_tower", "language_model"),
        ("tiny-deepseek-ocr", ["attention"], "self_attn", "vision_model"),  # CLIP-L's attention is no decoder's
        ("tiny-deepseek-ocr", ["experts"], "experts", "self_attn"),
        ("tiny-deepseek-ocr", ["vision"], "vision_model.encoder", "language_model"),
        ("tiny-deepseek-ocr", ["vision"], "sam_model", "language_model"),
        ("tiny-qwen2.5-vl", ["mlp"], "mlp", "visual"),
        ("tiny-qwen2.5-vl", ["vision"], "visual", "language_model"),
    ],
)
def test_lora_targets(tiny_presets, preset, groups, must_train, must_not_train):
    bundle = load_model(preset)
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=groups, seed=0, gradient_checkpointing=False)
    names = [n for n, p in bundle.model.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    assert any(must_train in n for n in names)
    assert not any(must_not_train in n for n in names)
    trainable, total = trainable_parameters(bundle.model)
    assert 0 < trainable < total


def test_every_family_is_one_dict_line():
    assert set(FAMILIES) == {"deepseek-ocr", "deepseek-ocr-2", "qwen2.5-vl"}
    for name, family in FAMILIES.items():
        assert family.name == name and family.model_types


def test_adapter_card_points_to_its_base(tiny_presets, tmp_path):
    from ocrloop.models.loading import save_model

    bundle = load_model("tiny-qwen2.5-vl")
    attach_lora(bundle, rank=2, alpha=4, dropout=0.0, groups=["attention"], seed=0, gradient_checkpointing=False)
    save_model(bundle, tmp_path / "adapter", base_model="tiny-qwen2.5-vl")
    card = json.loads((tmp_path / "adapter" / "ocrloop_model.json").read_text())
    assert card["kind"] == "adapter" and card["base_model"] == "tiny-qwen2.5-vl" and card["family"] == "qwen2.5-vl"
    reloaded = load_model(str(tmp_path / "adapter"))
    assert reloaded.extras["adapter"] == str(tmp_path / "adapter")


def test_gundam_pages_with_and_without_local_tiles_batch_together(tiny_presets):
    from ocrloop.models.base import collate

    bundle = load_model("tiny-deepseek-ocr-2")
    small = bundle.encode(Image.new("RGB", (500, 600), "white"), "markdown", "a", "gundam")  # fits one 768 tile: no crops
    large = bundle.encode(Image.new("RGB", (1400, 1000), "white"), "markdown", "b", "gundam")
    assert "pixel_values_local" not in small.vision and "pixel_values_local" in large.vision
    for pages in ([small, large], [large, small]):
        batch = collate(pages, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer)
        assert batch["pixel_values_local"].shape[0] == int(batch["num_local_patches"].sum())
        assert bundle.model(**batch).loss.isfinite()


def test_bounded_vision_memory_runs_few_views_at_a_time_and_gives_the_same_features(tiny_presets, monkeypatch):
    from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as modeling

    from ocrloop.models.base import collate

    bundle = load_model("tiny-deepseek-ocr-2")
    pages = [bundle.encode(Image.new("RGB", (1400, 1000), shade), "markdown", "a", "gundam") for shade in ("white", "gray")]
    batch = collate(pages, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer)
    inputs = {k: batch[k] for k in bundle.family.feature_input_keys}
    calls: list[tuple[int, int]] = []  # (views, tokens per view) of every attention call
    attention = type(next(m for m in bundle.model.modules() if isinstance(m, modeling.DeepseekOcr2SamVisionAttention)))
    original = attention.forward

    def counted(self, hidden_states, *args, **kwargs):
        calls.append((hidden_states.shape[0], hidden_states.shape[1] * hidden_states.shape[2]))
        return original(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(attention, "forward", counted)
    with torch.no_grad():
        whole = bundle.model.get_image_features(**inputs).pooler_output
        calls_whole = len(calls)
        # The tiny tower's global layer: 2 heads x 2304^2 tokens of a 768 tile in fp32 = 42 MB a view.
        with bundle.family.bounded_vision_memory(bundle.model, budget_bytes=100 * 2**20):
            bounded = bundle.model.get_image_features(**inputs).pooler_output
    local_views = int(batch["num_local_patches"].sum())
    tile_calls = [views for views, tokens in calls if tokens == 48 * 48]  # global attention over whole 768 tiles
    assert local_views > 2 and len(calls) > 2 * calls_whole
    assert max(tile_calls) == local_views and max(tile_calls[1:]) == 2  # every tile at once, then two at a time...
    assert attention.forward is counted and "forward" not in vars(bundle.model.model.vision_tower)  # ...and nothing stays patched
    for a, b in zip(whole, bounded):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_prompts_and_resolutions_are_the_configs_vocabulary():
    from typing import get_args

    from ocrloop.config import Prompt, Resolution
    from ocrloop.models import PROMPT_TEMPLATES, RESOLUTIONS

    assert tuple(PROMPT_TEMPLATES) == get_args(Prompt) and tuple(RESOLUTIONS) == get_args(Resolution)
    for family in FAMILIES.values():
        assert set(family.resolutions) <= set(get_args(Resolution))


@pytest.mark.parametrize("preset", PRESETS)
def test_reads_never_plan_cudnn_attention(tiny_presets, preset):
    """With a dynamic cache every decoded token is a new key length, which cuDNN's attention plans anew on the CPU: 64
    blocks read right after training took 10.5 s with it and 2.0 s without (H200). Such reads exclude it themselves."""
    bundle = load_model(preset)
    page = Image.new("RGB", (200, 100), "white")
    seen: list[bool] = []
    hook = bundle.model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.cudnn_sdp_enabled()))
    try:
        bundle.generate([page], resolution=FAST_RESOLUTION[preset], max_new_tokens=3)
        dynamic, seen[:] = list(seen), []
        bundle.generate([page], resolution=FAST_RESOLUTION[preset], max_new_tokens=3, cache_implementation="static")
    finally:
        hook.remove()
    assert dynamic and not any(dynamic)
    # A static cache has one key length, planned once: its reads keep the process's own choice, as when measured.
    assert seen and all(seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the process's own choice is back after the read
