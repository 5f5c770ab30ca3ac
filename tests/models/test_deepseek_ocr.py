"""DeepSeek-OCR (v1), the native port: published weight names and shapes, the page layout, training, clear refusals."""

import json
import re
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ocrloop.config import OcrloopConfig, apply_overrides
from ocrloop.data.synth import SynthOptions, synthesize_dataset
from ocrloop.models import detect_family, load_model
from ocrloop.models.base import IGNORE_INDEX, ModelError, collate
from ocrloop.models.loading import pick_backend
from ocrloop.train.finetune import train
from tests.conftest import SMALL_PAGES

PRESET = "tiny-deepseek-ocr"

# The published checkpoint's weight names (deepseek-ai/DeepSeek-OCR, model-00001-of-000001.safetensors), as patterns.
PUBLISHED_NAME_PATTERNS = [
    r"model\.sam_model\.(pos_embed|patch_embed\.proj\.(weight|bias)|net_[23]\.weight|neck\.[0-3]\.(weight|bias))",
    r"model\.sam_model\.blocks\.\d+\.(norm[12]\.(weight|bias)|attn\.(rel_pos_[hw]|qkv\.(weight|bias)|proj\.(weight|bias))"
    r"|mlp\.lin[12]\.(weight|bias))",
    r"model\.vision_model\.(embeddings\.(class_embedding|patch_embedding\.weight|position_embedding\.weight)"
    r"|pre_layrnorm\.(weight|bias))",
    r"model\.vision_model\.transformer\.layers\.\d+\.(layer_norm[12]\.(weight|bias)|self_attn\.(qkv_proj|out_proj)\.(weight|bias)"
    r"|mlp\.fc[12]\.(weight|bias))",
    r"model\.(projector\.layers\.(weight|bias)|image_newline|view_seperator|embed_tokens\.weight|norm\.weight)",
    r"model\.layers\.\d+\.((input|post_attention)_layernorm\.weight|self_attn\.[qkvo]_proj\.weight)",
    r"model\.layers\.\d+\.mlp\.((shared_experts\.)?(gate|up|down)_proj\.weight|gate\.weight|experts\.\d+\.(gate|up|down)_proj\.weight)",
    r"lm_head\.weight",
]


@pytest.fixture(scope="module")
def preset_path(tiny_presets):
    return tiny_presets[PRESET]


def _saved_weights(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_a_built_checkpoint_has_the_published_layout(preset_path):
    config = json.loads((preset_path / "config.json").read_text())
    assert config["model_type"] == "deepseek_vl_v2" and config["architectures"] == ["DeepseekOCRForCausalLM"]
    assert {"language_config", "vision_config", "projector_config"} <= set(config)
    assert set(config["vision_config"]["width"]) == {"clip-l-14-224", "sam_vit_b"}
    assert config["projector_config"]["projector_type"] == "linear"
    assert config["hidden_size"] == config["language_config"]["hidden_size"]  # repeated at the top level, as published
    assert "auto_map" not in config  # no model code travels with it, and none is run
    names = set(_saved_weights(preset_path))
    unmatched = [n for n in names if not any(re.fullmatch(p, n) for p in PUBLISHED_NAME_PATTERNS)]
    assert not unmatched
    layers = config["language_config"]["num_hidden_layers"]
    experts = config["language_config"]["n_routed_experts"]
    assert sum(".mlp.experts." in n for n in names) == 3 * experts * (layers - 1)  # one module per expert, as published


def test_the_full_size_architecture_has_the_published_parameter_count():
    from ocrloop.models.deepseek_ocr_model import DeepseekOcrConfig, DeepseekOcrForConditionalGeneration

    with torch.device("meta"):
        model = DeepseekOcrForConditionalGeneration(DeepseekOcrConfig())
    # model.safetensors.index.json of the published checkpoint: total_size 6,672,212,480 bytes of bf16.
    assert sum(p.numel() for p in model.parameters()) * 2 == 6_672_212_480
    sam = model.model.sam_model
    assert tuple(sam.pos_embed.shape) == (1, 64, 64, 768) and tuple(sam.layers[2].attn.rel_pos_h.shape) == (127, 64)
    assert tuple(sam.layers[0].attn.rel_pos_h.shape) == (27, 64)
    assert tuple(model.model.projector.weight.shape) == (1280, 2048)


def test_weights_load_by_their_published_names_and_save_back_unchanged(preset_path, tmp_path):
    bundle = load_model(str(preset_path), backend="hf")
    published = _saved_weights(preset_path)
    width = bundle.model.config.clip_config.hidden_size
    qkv = published["model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight"]
    attention = bundle.model.model.vision_model.encoder.layers[0].self_attn
    for index, projection in enumerate((attention.q_proj, attention.k_proj, attention.v_proj)):
        assert torch.equal(projection.weight, qkv[index * width:(index + 1) * width])
    experts = bundle.model.model.language_model.layers[1].mlp.experts
    assert torch.equal(experts.down_proj[2], published["model.layers.1.mlp.experts.2.down_proj.weight"])
    assert torch.equal(bundle.model.model.view_separator, published["model.view_seperator"])
    bundle.model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architectures"] == ["DeepseekOCRForCausalLM"]
    again = _saved_weights(tmp_path / "again")
    assert again.keys() == published.keys()
    assert all(torch.equal(again[name], published[name]) for name in published)


@pytest.mark.parametrize(
    ("resolution", "size", "image_tokens", "tiles"),
    [
        ("tiny", (900, 1200), 8 * 9 + 1, 0),  # 512 px view: 8 rows of 8 features + newline, + separator
        ("small", (900, 1200), 10 * 11 + 1, 0),
        ("base", (900, 1200), 16 * 17 + 1, 0),
        ("large", (900, 1200), 20 * 21 + 1, 0),
        ("gundam", (300, 400), 16 * 17 + 1, 0),  # small page: no tiles
        ("gundam", (900, 1200), 16 * 17 + 1 + 30 * 21, 6),  # 2 x 3 tiles of 640 px: 30 rows of 20 + newline
    ],
)
def test_image_tokens_follow_the_deepseek_layout(preset_path, resolution, size, image_tokens, tiles):
    bundle = load_model(str(preset_path), backend="hf")
    page = Image.new("RGB", size, "white")
    encoded = bundle.encode(page, "free", "Total: $5", resolution)
    assert encoded.image_tokens == image_tokens == bundle.family.image_tokens_for(bundle, *size, resolution)
    image_id = bundle.tokenizer.convert_tokens_to_ids("<image>")
    assert encoded.input_ids.count(image_id) == image_tokens
    assert len(encoded.vision.get("pixel_values_local", ())) == tiles
    answer = [label for label in encoded.labels if label != IGNORE_INDEX]
    assert bundle.tokenizer.decode(answer, skip_special_tokens=True) == "Total: $5"
    batch = collate([encoded], bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer)
    features = bundle.model.get_image_features(**{k: batch[k] for k in bundle.family.feature_input_keys if k in batch})
    assert features.pooler_output[0].shape[0] == image_tokens
    assert bundle.model(**batch).loss.isfinite()


def test_page_features_are_rows_closed_by_newlines_tiles_first_then_the_global_view(preset_path):
    bundle = load_model(str(preset_path), backend="hf")
    model = bundle.model.model
    encoded = bundle.encode(Image.effect_noise((900, 1200), 60).convert("RGB"), "free", None, "gundam")
    vision = encoded.vision
    with torch.no_grad():
        page = model.get_image_features(**vision).pooler_output[0]
        tiles = model._view_features(vision["pixel_values_local"])  # (6, 10, 10, width): 2 across, 3 down
        global_view = model._view_features(vision["pixel_values"])[0]
    width = 2 * 10 + 1  # two tiles of 10 features, then the newline
    local = page[:30 * width].view(30, width, -1)
    assert torch.equal(local[:, -1], model.image_newline.expand(30, -1))
    assert torch.equal(local[:10, :10], tiles[0]) and torch.equal(local[:10, 10:20], tiles[1])
    assert torch.equal(local[20:30, 10:20], tiles[5])  # row-major: the last tile is bottom right
    start = 30 * width
    assert torch.equal(page[start:start + 16 * 17].view(16, 17, -1)[:, :16], global_view)
    assert torch.equal(page[-1], model.view_separator)


def test_trains_saves_and_reloads_on_the_hf_backend(preset_path, tmp_path):
    dataset = tmp_path / "ds"
    synthesize_dataset(dataset, SynthOptions(n=5, seed=4, scale=0.3, categories=("receipt",)), SMALL_PAGES)
    config = apply_overrides(
        OcrloopConfig(dataset_dir=dataset, base_model=str(preset_path), data=SMALL_PAGES, registry_path=tmp_path / "r.db"),
        {"training.resolution": "tiny", "training.max_steps": 6, "training.batch_size": 2, "training.gradient_accumulation_steps": 1,
         "training.warmup_steps": 0, "training.learning_rate": 1e-2, "training.max_new_tokens": 12,
         "training.gradient_checkpointing": False, "training.lora_targets": ["attention", "mlp"],
         "training.logging_steps": 1},
    )
    result = train(config, tmp_path / "out")
    assert result.card["backend"] == "hf"
    losses = [e["loss"] for e in result.card["metrics"]["train_loss_by_epoch"]]
    assert losses[-1] < losses[0]
    image = Image.new("RGB", (300, 400), "white")
    first = load_model(str(tmp_path / "out")).generate([image], resolution="tiny", max_new_tokens=12)
    second = load_model(str(tmp_path / "out")).generate([image], resolution="tiny", max_new_tokens=12)
    assert first == second


def test_unsloth_is_refused_by_name_and_auto_is_hf():
    from ocrloop.models import FAMILIES

    family = FAMILIES["deepseek-ocr"]()
    assert pick_backend("auto", family) == "hf"
    with pytest.raises(ModelError, match="Unsloth cannot patch deepseek-ocr; use --backend hf"):
        pick_backend("unsloth", family)


def test_other_models_of_the_same_type_are_not_taken_for_it():
    # "deepseek_vl_v2" is DeepSeek-VL2's type too, and that of DeepSeek-OCR-2's own remote-code release.
    for architecture in ("DeepseekVLV2ForCausalLM", "DeepseekOCR2ForCausalLM"):
        config = {"model_type": "deepseek_vl_v2", "architectures": [architecture], "auto_map": {"AutoModel": "x.Y"}}
        with pytest.raises(ModelError, match=f"remote code for model_type='deepseek_vl_v2' \\(architectures {architecture}\\)"):
            detect_family(config)
    assert detect_family({"model_type": "deepseek_vl_v2", "architectures": ["DeepseekOCRForCausalLM"]}).name == "deepseek-ocr"


def _edited_copy(preset_path, tmp_path, edit):
    folder = tmp_path / "edited"
    shutil.copytree(preset_path, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_published_config_extras_load_and_no_remote_code_runs(preset_path, tmp_path):
    # The published config.json also points at its own model code and carries fields only that code reads.
    def publish(config):
        config.update(auto_map={"AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
                                "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"},
                      candidate_resolutions=[[1024, 1024]], global_view_pos="head", tile_tag="2D",
                      torch_dtype="bfloat16", transformers_version="4.46.3")
        config["language_config"].update(kv_lora_rank=None, q_lora_rank=None, qk_nope_head_dim=0, qk_rope_head_dim=0,
                                         v_head_dim=0, model_type="deepseek_v2", torch_dtype="bfloat16")
        config["vision_config"].update(model_type="vision", mlp_ratio=3.7362)

    folder = _edited_copy(preset_path, tmp_path, publish)
    assert not list(folder.glob("*.py"))  # the code it points at is absent: loading must not need it
    page = Image.effect_noise((300, 400), 50).convert("RGB")
    published = load_model(str(folder), backend="hf").generate([page], prompt="free", resolution="tiny", max_new_tokens=6)
    built = load_model(str(preset_path), backend="hf").generate([page], prompt="free", resolution="tiny", max_new_tokens=6)
    assert published == built


def test_a_config_the_port_does_not_implement_is_one_clear_error(preset_path, tmp_path):
    folder = _edited_copy(preset_path, tmp_path, lambda config: config["language_config"].update(use_mla=True))
    with pytest.raises(ModelError, match="use_mla=true"):
        load_model(str(folder), backend="hf")


def test_unknown_remote_code_is_refused_naming_its_type_and_the_known_families(preset_path, tmp_path):
    folder = _edited_copy(preset_path, tmp_path, lambda config: config.update(model_type="mystery_ocr", auto_map={"AutoModel": "m.M"}))
    with pytest.raises(ModelError) as refused:
        load_model(str(folder), backend="hf")
    message = str(refused.value)
    assert "remote code for model_type='mystery_ocr'" in message and "will not run" in message
    assert all(family in message for family in ("deepseek-ocr (", "deepseek-ocr-2 (", "qwen2.5-vl (qwen2_5_vl)"))
