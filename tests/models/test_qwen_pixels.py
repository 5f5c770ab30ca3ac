"""Qwen2.5-VL reads uint8 patches normalized on the device, packed vision attention in one call per window
length, and a decoded token's grouped attention without copies of the cache: each must give exactly what the
image processor and transformers' own attention give."""

import numpy as np
import pytest
import torch
from PIL import Image

from ocrloop.models import load_model
from ocrloop.models.base import collate
from ocrloop.models.qwen2_5_vl import GROUPED_DECODE_SDPA, PACKED_SDPA, _uint8_patches, grouped_decode_sdpa


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


@pytest.mark.parametrize("sizes", [[(448, 112), (448, 112)], [(448, 112), (300, 200), (90, 60)],
                                   [(300, 200), (1000, 700), (300, 200), (130, 420)]])
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


@pytest.mark.parametrize(("rows", "query_length"), [(3, 1), (1, 1), (3, 3)])
def test_grouped_decode_attention_equals_transformers_sdpa(qwen, rows, query_length):
    """One decoded token per row of a padded cache (some columns masked off per row), four query heads on two key
    heads: the folded attention gives what transformers' SDPA with repeated keys gives; one row and longer queries
    are transformers' own."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attention = qwen.model.model.language_model.layers[0].self_attn
    assert qwen.model.model.language_model.config._attn_implementation == GROUPED_DECODE_SDPA
    assert attention.num_key_value_groups == 2
    generator = torch.Generator().manual_seed(0)
    columns, dim = 40, attention.head_dim
    query = torch.randn(rows, 4, query_length, dim, generator=generator)
    key, value = (torch.randn(rows, 2, columns, dim, generator=generator) for _ in range(2))
    mask = torch.rand(rows, 1, 1, columns, generator=generator) > 0.3
    mask[:, :, :, 0] = True
    mask = mask.expand(rows, 1, query_length, columns)
    folded, _ = grouped_decode_sdpa(attention, query, key, value, mask, scaling=attention.scaling, dropout=0.0)
    repeated, _ = sdpa_attention_forward(attention, query, key, value, mask, scaling=attention.scaling, dropout=0.0)
    assert folded.shape == repeated.shape == (rows, query_length, 4, dim)
    assert torch.allclose(folded, repeated, atol=1e-5)
    masked_column = mask[0, 0, 0].logical_not().nonzero()[0, 0]
    key[0, :, masked_column] = 1e3  # a column masked off for the first row changes nothing there
    again, _ = grouped_decode_sdpa(attention, query, key, value, mask, scaling=attention.scaling, dropout=0.0)
    assert torch.allclose(again[0], folded[0], atol=1e-5)


@pytest.mark.parametrize("size", [(448, 112), (300, 200), (1000, 700), (3000, 2000), (50, 40), (28, 4000)])
@pytest.mark.parametrize("resolution", ["tiny", "base"])
def test_length_counted_from_the_page_size_equals_the_encoded_length(qwen, size, resolution):
    """The page check counts tokens from page sizes without decoding (``encoded_lengths``); it must agree with
    ``encode`` for pages that are resized down, up, or not at all, and for each page of a batch of targets."""
    (image,) = _images([size])
    targets = ["Total: $12.50\n**Date:** 2025-01-01", "", "x" * 40]
    encoded = [qwen.encode(image, "ocr", target, resolution) for target in targets]
    counted = qwen.family.encoded_lengths(qwen, [size, size, size], "ocr", targets, resolution)
    assert counted == [(len(e), e.image_tokens) for e in encoded]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_precomputed_rope_positions_equal_the_models(qwen, padding_side):
    """The collator's 3-D positions (text, then each page's rows and columns) are the model's ``get_rope_index``,
    for pages of different shapes and padding on either side."""
    encoded = [qwen.encode(image, "ocr", text, "tiny") for image, text in
               zip(_images([(448, 112), (300, 200), (1000, 700)]), ["AB", "a longer answer 123", ""])]
    batch = collate(encoded, qwen.tokenizer.pad_token_id, padding_side=padding_side, family=qwen.family,
                    tokenizer=qwen.tokenizer, dtype=qwen.dtype)
    assert batch["mm_token_type_ids"].sum() == sum(e.image_tokens for e in encoded)
    laid_out = dict(batch)
    qwen.family.add_training_layout(qwen, laid_out)
    positions = laid_out["position_ids"]
    expected, _ = qwen.model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                                  attention_mask=batch["attention_mask"])
    assert positions.shape == expected.shape
    assert torch.equal(positions, expected)
    # the rows and columns of a page are really 2-D: not the 1-D count the model used without token types
    assert len(set(positions[1, 0].tolist())) < len(set(positions[2, 0].tolist()))


def test_training_with_the_precomputed_layout_equals_the_models_own(qwen):
    """One training forward and backward with the collator's positions and vision layout gives the loss and gradients
    the model gets computing them itself."""
    encoded = [qwen.encode(image, "ocr", text, "tiny") for image, text in
               zip(_images([(448, 112), (448, 112), (300, 200)]), ["AB", "CDE 12", "line three"])]
    plain = collate(encoded, qwen.tokenizer.pad_token_id, family=qwen.family, tokenizer=qwen.tokenizer, dtype=qwen.dtype)
    laid_out = dict(plain)
    qwen.family.add_training_layout(qwen, laid_out)
    assert {"position_ids", "image_window_index", "image_cu_seqlens", "image_max_window_seqlen"} <= set(laid_out)
    model = qwen.model
    results = []
    for batch in (plain, laid_out):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    model.zero_grad()
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    assert len(grads_a) == len(grads_b) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_a, grads_b))
    # and the model really uses what the collator gave it
    with torch.no_grad():
        for key in ("position_ids", "image_window_index"):
            wrong = dict(laid_out, **{key: torch.zeros_like(laid_out[key])})
            assert not torch.allclose(model(**wrong).loss, loss_a, atol=1e-4), key


def test_packed_vision_attention_by_window_length_trains_like_one_call_per_window():
    """Windows of several lengths in one packed batch (pages of different sizes): the attention grouped by length
    gives the per-window outputs and the same gradients for queries, keys and values."""
    from ocrloop.models.qwen2_5_vl import packed_sdpa

    generator = torch.Generator().manual_seed(0)
    lengths = [16, 16, 9, 16, 12, 9, 4]
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    tensors = [torch.randn(1, 2, sum(lengths), 8, generator=generator, requires_grad=True) for _ in range(3)]
    weights = torch.randn(1, sum(lengths), 2, 8, generator=generator)

    packed, _ = packed_sdpa(None, *tensors, cu_seq_lens_q=bounds, max_length_q=max(lengths))
    (packed * weights).sum().backward()
    packed_grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    per_window = torch.cat([torch.nn.functional.scaled_dot_product_attention(q, k, v)
                            for q, k, v in zip(*(torch.split(t, lengths, dim=2) for t in tensors))], dim=2).transpose(1, 2)
    (per_window * weights).sum().backward()
    assert torch.allclose(packed, per_window, atol=1e-6)
    assert all(torch.allclose(a, t.grad, atol=1e-6) for a, t in zip(packed_grads, tensors))


def test_packed_vision_attention_gathers_once_per_layer_and_reads_its_bounds_once_per_forward():
    """On a GPU each read of the bounds and each index copied to the device makes the host wait: a layer gathers its
    queries, keys and values by length once and puts the outputs back once, whatever the number of lengths, and the
    layers after the first reuse the first one's grouping of the same bounds."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    from ocrloop.models.qwen2_5_vl import packed_sdpa

    class Counted(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.__name__.split(".")[0]] += 1
            return func(*args, **(kwargs or {}))

    lengths = [16, 9, 16, 12, 9, 4]  # four lengths
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    tensors = [torch.randn(1, 2, sum(lengths), 8) for _ in range(3)]
    layers = []
    for _ in range(2):  # two layers of one forward: the same bounds tensor
        with Counted() as counted:
            packed_sdpa(None, *tensors, cu_seq_lens_q=bounds, max_length_q=max(lengths))
        layers.append(counted.ops)
    for ops in layers:
        assert ops["index"] == 3 and ops["index_put_"] == 1
        assert sum(n for name, n in ops.items() if "scaled_dot_product" in name) == 4
    assert layers[0]["arange"] == 4 and layers[1]["arange"] == 0  # the grouping is worked out by the first layer only
