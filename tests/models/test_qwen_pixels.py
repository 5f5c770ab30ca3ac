"""Qwen2.5-VL reads uint8 patches normalized on the device, and packed vision attention in one call:
both must give exactly what the image processor and transformers' per-window attention give."""

import numpy as np
import pytest
import torch
from PIL import Image

from ocrloop.models import load_model
from ocrloop.models.base import collate
from ocrloop.models.qwen2_5_vl import PACKED_SDPA, _uint8_patches


@pytest.fixture(scope="module")
def qwen(tiny_presets):
    return load_model("tiny-qwen2.5-vl", backend="hf")


def _images(sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("size", [(448, 112), (300, 200), (1000, 700), (50, 40)])
def test_uint8_patches_normalized_on_the_device_equal_the_processors_pixels(qwen, size):
    (image,) = _images([size])
    processor = qwen.image_processor
    expected = processor(images=[image], size={"shortest_edge": 4 * 28 * 28, "longest_edge": 512 * 512}, return_tensors="pt")
    patches, grid = _uint8_patches(processor, image, 512 * 512)
    assert patches.dtype == torch.uint8 and grid.tolist() == expected["image_grid_thw"][0].tolist()
    embed = qwen.model.model.visual.patch_embed
    (hook,) = embed._forward_pre_hooks.values()
    (normalized,), _ = hook(embed, (patches.float(),), {})
    assert normalized.shape == expected["pixel_values"].shape
    assert torch.allclose(normalized, expected["pixel_values"], atol=1e-6)


@pytest.mark.parametrize("sizes", [[(448, 112), (448, 112)], [(448, 112), (300, 200), (90, 60)]])
def test_packed_vision_attention_gives_the_per_window_features(qwen, sizes):
    encoded = [qwen.encode(image, "ocr", "AB", "tiny") for image in _images(sizes)]
    batch = collate(encoded, qwen.tokenizer.pad_token_id, family=qwen.family, tokenizer=qwen.tokenizer, dtype=qwen.dtype)
    inner = qwen.model.model
    config = inner.visual.config
    assert config._attn_implementation == PACKED_SDPA
    with torch.no_grad():
        packed = inner.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
        config._attn_implementation_internal = "sdpa"  # transformers' own: one call per window and image
        try:
            per_window = inner.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
        finally:
            config._attn_implementation_internal = PACKED_SDPA
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(packed, per_window))


@pytest.mark.parametrize("size", [(448, 112), (300, 200), (1000, 700), (3000, 2000), (50, 40), (28, 4000)])
@pytest.mark.parametrize("resolution", ["tiny", "base"])
def test_length_counted_from_the_page_size_equals_the_encoded_length(qwen, size, resolution):
    """The page check counts tokens from page sizes without decoding (``encoded_length``); it must agree with
    ``encode`` for pages that are resized down, up, or not at all."""
    (image,) = _images([size])
    encoded = qwen.encode(image, "ocr", "Total: $12.50\n**Date:** 2025-01-01", resolution)
    counted = qwen.family.encoded_length(qwen, *size, "ocr", "Total: $12.50\n**Date:** 2025-01-01", resolution)
    assert counted == (len(encoded), encoded.image_tokens)
