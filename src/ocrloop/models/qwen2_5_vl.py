"""Qwen2.5-VL: native ``Qwen2_5_VLForConditionalGeneration`` of transformers.

The tokenizer and the PIL image processor are used directly (not ``Qwen2_5_VLProcessor``,
which insists on a torchvision video processor that OCR never needs). Resolution modes are
pixel budgets: the page is resized to at most side x side pixels, one token per 28x28 area.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ocrloop.models.base import RESOLUTIONS, EncodedExample, OCRFamily, OCRModel

_MIN_PIXELS = 4 * 28 * 28
_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}


_PROMPT_IDS: dict[tuple, list[int]] = {}
# Name of the packed vision attention below. transformers hands the window boundaries (cu_seqlens) only to
# implementations whose name says "flash"; any other name gets one attention call per window and image.
PACKED_SDPA = "ocrloop_flash_compatible_sdpa"
GROUPED_DECODE_SDPA = "ocrloop_grouped_decode_sdpa"  # the text model's attention: see grouped_decode_sdpa


def _uint8_patches(processor: Any, image: Image.Image, max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The page resized as ``processor`` resizes it, cut into its patches in the processor's order, still uint8:
    ``(patches [N, 3, p, p], grid_thw [3])``. Rescaling, normalization and the temporal copy happen on the
    model's device (``_PatchNormalizer``): a sixth of the bytes per patch on the CPU and across the bus,
    and no float work in the data loader."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    patch, merge = processor.patch_size, processor.merge_size
    image = image.convert("RGB")
    height, width = smart_resize(image.height, image.width, factor=patch * merge, min_pixels=_MIN_PIXELS, max_pixels=max_pixels)
    if (width, height) != image.size:
        image = image.resize((width, height), resample=processor.resample)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # C, H, W (a writable copy)
    grid_h, grid_w = height // patch, width // patch
    patches = pixels.reshape(3, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.permute(1, 4, 2, 5, 0, 3, 6).reshape(grid_h * grid_w, 3, patch, patch).contiguous()
    return patches, torch.tensor([1, grid_h, grid_w])


class _PatchNormalizer:
    """Forward pre-hook of the vision tower's patch embedding: uint8 patches [N, 3, p, p] (already cast to
    the tower's dtype by the model, exactly: integers below 256) become the processor's normalized
    [N, 3 * t * p * p] rows. Inputs already normalized (2-D) pass untouched."""

    def __init__(self, processor: Any):
        self.scale = processor.rescale_factor
        self.mean, self.std = processor.image_mean, processor.image_std
        self.temporal = processor.temporal_patch_size

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        pixels = args[0] if args else kwargs.get("hidden_states")
        if pixels is None or pixels.dim() != 4:
            return None
        count, channels, size, _ = pixels.shape
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(1, channels, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(1, channels, 1, 1)
        values = (pixels.float() * self.scale - mean) / std
        values = values.unsqueeze(2).expand(count, channels, self.temporal, size, size).reshape(count, -1).to(pixels.dtype)
        if args:
            return (values, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": values}


def _packing(bounds: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The positions of the sequences ``bounds`` delimits, grouped by length (one index on ``device``), and each
    group's (length, count) in that order. Worked out once per bounds tensor, which every layer of a forward shares:
    reading the bounds, and copying the index to a GPU, each make the host wait for the GPU (on pages of many sizes,
    about 60 waits a step when each layer did it for each length)."""
    cached = getattr(bounds, "_ocrloop_packing", None)
    if cached is not None and cached[0].device == device:
        return cached
    edges = bounds.tolist()
    starts_by_length: dict[int, list[int]] = {}
    for start, end in zip(edges[:-1], edges[1:]):
        if end > start:
            starts_by_length.setdefault(end - start, []).append(start)
    order = torch.cat([(torch.tensor(starts)[:, None] + torch.arange(length)).reshape(-1)
                       for length, starts in starts_by_length.items()])
    packing = (order.to(device), [(length, len(starts)) for length, starts in starts_by_length.items()])
    bounds._ocrloop_packing = packing
    return packing


def packed_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any = None,
                scaling: float | None = None, dropout: float = 0.0, cu_seq_lens_q: torch.Tensor | None = None,
                max_length_q: int | None = None, is_causal: bool = False, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention within each packed sequence (window or image) of ``query`` [1, heads, total, dim].

    Sequences of equal length run as one batched SDPA call: all of them at once when every window has the same
    length (a line, or a page whose sides are window multiples); otherwise one call per distinct length, where
    transformers makes one per sequence (thousands for a batch of pages of different sizes). Queries, keys and values
    are gathered by length once, and the outputs put back once. Returns [1, total, heads, dim]."""
    _, heads, total, dim = query.shape
    count = cu_seq_lens_q.numel() - 1
    if max_length_q is not None and max_length_q * count == total:
        q, k, v = (t.reshape(heads, count, max_length_q, dim).transpose(0, 1) for t in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=is_causal, scale=scaling)
        return out.permute(0, 2, 1, 3).reshape(1, total, heads, dim), None
    order, groups = _packing(cu_seq_lens_q, query.device)
    by_length = [t[0][:, order] for t in (query, key, value)]  # [heads, total, dim], each length's sequences together
    attended, offset = [], 0
    for length, sequences in groups:
        size = length * sequences
        q, k, v = (t[:, offset:offset + size].reshape(heads, sequences, length, dim).transpose(0, 1) for t in by_length)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=is_causal, scale=scaling)
        attended.append(out.transpose(0, 1).reshape(heads, size, dim))
        offset += size
    out = torch.empty_like(query[0])
    out[:, order] = torch.cat(attended, dim=1)
    return out.transpose(0, 1).unsqueeze(0), None


def grouped_decode_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one decoded token per row of at least a group's worth of rows, with
    a padding mask and grouped keys: there transformers repeats every key and value head for its group of query
    heads (``repeat_kv``: seven copies of the whole cache a layer for Qwen2.5-VL-7B, 30 of a 40 ms decode step at
    batch 64 on an H200). Here the group's query heads become the query positions of their key head instead: the
    same attention, and no copy. Fewer rows keep the copies, which are small there, and the parallelism of one
    attention block per query head (folded, one page alone decoded at 8.5 ms a token against 6.7). Returns
    [batch, 1, heads, dim]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, query_length, dim = query.shape
    mask_broadcasts = attention_mask is not None and attention_mask.shape[1] == 1 and attention_mask.shape[2] == 1
    if groups == 1 or batch < groups or query_length != 1 or not mask_broadcasts or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    folded = query.reshape(batch, key.shape[1], groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask,
                                                           dropout_p=kwargs.get("dropout", 0.0), scale=kwargs.get("scaling"))
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


def _longest_side(resolution: str) -> int:
    """Pages are resized to at most this squared in pixels (``gundam`` has no single view here: 1600 px)."""
    return RESOLUTIONS[resolution][0] if resolution != "gundam" else 1600


def _inner_model(model: Any) -> Any:
    """The ``Qwen2_5_VLModel`` inside ``model`` (a peft model, or the one for conditional generation): the module
    holding the vision tower and computing the 3-D rotary positions."""
    return next(m for m in model.modules() if hasattr(m, "visual") and hasattr(m.visual, "patch_embed"))


class Qwen25VLFamily(OCRFamily):
    name = "qwen2.5-vl"
    image_token = "<|image_pad|>"
    random_sizes = ("tiny", "small", "medium", "full")
    model_types = ("qwen2_5_vl",)
    pixel_keys = ("pixel_values",)
    feature_input_keys = ("pixel_values", "image_grid_thw")
    vision_parameter_markers = ("visual.",)
    lora_patterns = {
        "attention": r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
        "mlp": r".*language_model\.layers\.\d+\.mlp\.(gate_proj|up_proj|down_proj)",
        "experts": None,  # dense model: no experts
        "vision": r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate_proj|up_proj|down_proj))|.*visual\.merger\.mlp\.(0|2)",
    }

    def model_class(self) -> Any:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def load_processors(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return AutoTokenizer.from_pretrained(path), Qwen2VLImageProcessorPil.from_pretrained(path)

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        return [end] if end is not None and end != tokenizer.unk_token_id else [tokenizer.eos_token_id]

    def encode(self, bundle: OCRModel, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        self.check_resolution(resolution)
        side = _longest_side(resolution)
        patches, grid = _uint8_patches(bundle.image_processor, image, side * side)
        image_tokens = int(grid.prod()) // bundle.image_processor.merge_size**2
        vision = {"pixel_values": patches, "image_grid_thw": grid.unsqueeze(0)}
        return self._join(bundle, self._prompt_ids(bundle, prompt, image_tokens), target, vision, image_tokens)

    def image_tokens_for(self, bundle: OCRModel, width: int, height: int, resolution: str) -> int:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        processor = bundle.image_processor
        factor = processor.patch_size * processor.merge_size
        side = _longest_side(resolution)
        resized_height, resized_width = smart_resize(height, width, factor=factor, min_pixels=_MIN_PIXELS, max_pixels=side * side)
        return (resized_height // factor) * (resized_width // factor)

    def max_image_tokens(self, bundle: OCRModel, resolution: str) -> int:
        # Pages are resized to at most side x side pixels, in whole merged patches.
        factor = bundle.image_processor.patch_size * bundle.image_processor.merge_size
        side = _longest_side(resolution)
        return side * side // (factor * factor)

    def prompt_ids_for(self, bundle: OCRModel, prompt: str, image_tokens: int) -> list[int]:
        return self._prompt_ids(bundle, prompt, image_tokens)

    def _prompt_ids(self, bundle: OCRModel, prompt: str, image_tokens: int) -> list[int]:
        # Pages of one size share a prompt: tokenized once per (tokenizer, prompt, image tokens).
        key = (id(bundle.tokenizer), prompt, image_tokens)
        cached = _PROMPT_IDS.get(key)
        if cached is None:
            placeholder = "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>"
            instruction = self.format_prompt(prompt, placeholder).replace("<|grounding|>", "")
            text = f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
            cached = _PROMPT_IDS[key] = bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(cached)

    def finish_batch(self, batch: dict[str, Any], tokenizer: Any) -> None:
        # Without token types the model falls back to 1-D positions for image tokens: not how Qwen2.5-VL reads.
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        batch["mm_token_type_ids"] = (batch["input_ids"] == image_token_id).to(torch.int32)

    def prefill_positions(self, bundle: OCRModel, batch: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        # generate's four rows: the text positions (for the mask), then the model's 3-D ones; decode positions run
        # on from the last 3-D position, ``rope_deltas`` past the token count.
        text, _ = super().prefill_positions(bundle, batch)
        spatial, deltas = _inner_model(bundle.model).get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], attention_mask=batch["attention_mask"])
        return torch.cat([text[None], spatial]), deltas.flatten().tolist()

    def decode_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[None].expand(3, -1, -1)  # text tokens: the same position on all three axes

    def add_training_layout(self, bundle: OCRModel, batch: dict[str, Any]) -> None:
        """The text's 3-D positions (the model's ``get_rope_index``), and the vision tower's patch positions, attention
        spans and windows (transformers' own ``vision_utils``, which the tower takes precomputed as ``image_*``
        inputs)."""
        from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

        grid = batch.get("image_grid_thw")
        if grid is None:
            return
        inner = _inner_model(bundle.model)
        vision = inner.config.vision_config
        # The model's own computation, on the CPU tensors of the batch: no device work, no host syncs in the step.
        batch["position_ids"], _ = inner.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], grid,
                                                        attention_mask=batch["attention_mask"])
        if "feature_keys" in batch:  # features come from the cache: the tower does not run
            return
        cu_seqlens = get_vision_cu_seqlens(grid)
        window_index, cu_window_seqlens = get_vision_window_index(grid, vision.spatial_merge_size, vision.window_size,
                                                                  vision.patch_size)
        batch.update({
            "image_position_ids": get_vision_position_ids(grid, vision.spatial_merge_size),
            "image_cu_seqlens": cu_seqlens, "image_max_seqlen": int((cu_seqlens[1:] - cu_seqlens[:-1]).max()),
            "image_window_index": window_index, "image_cu_window_seqlens": cu_window_seqlens,
            "image_max_window_seqlen": int((cu_window_seqlens[1:] - cu_window_seqlens[:-1]).max()),
        })

    def prepare_loaded(self, bundle: OCRModel) -> None:
        """Pixels arrive as uint8 patches and are normalized on the model's device (see ``_uint8_patches``);
        packed vision attention runs one batched call per window length (``packed_sdpa``), and the text model's
        decode steps attend without copies of the cache (``grouped_decode_sdpa``)."""
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(PACKED_SDPA, packed_sdpa)
        AttentionInterface.register(GROUPED_DECODE_SDPA, grouped_decode_sdpa)
        AttentionMaskInterface.register(GROUPED_DECODE_SDPA, sdpa_mask)
        owner = _inner_model(bundle.model)
        owner.visual.patch_embed.register_forward_pre_hook(_PatchNormalizer(bundle.image_processor), with_kwargs=True)
        vision_config = owner.visual.config
        if vision_config._attn_implementation == "sdpa":
            vision_config._attn_implementation_internal = PACKED_SDPA
        text_config = owner.language_model.config
        if text_config._attn_implementation == "sdpa":
            text_config._attn_implementation_internal = GROUPED_DECODE_SDPA

    def special_tokens(self) -> dict[str, str]:
        return dict(_SPECIALS)

    def save_random_processors(self, tokenizer: Any, path: Path) -> None:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(path)

    def random_config(self, size: str, tokenizer: Any) -> Any:
        from transformers import Qwen2_5_VLConfig

        ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in _SPECIALS.items()}
        if size == "full":  # the published Qwen2.5-VL-7B architecture
            vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
                      "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112}
            text = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
        elif size == "medium":  # 43.6 M parameters: a wider and deeper reader to train from scratch (bench pretrain)
            vision = {"depth": 8, "hidden_size": 384, "intermediate_size": 1152, "num_heads": 6, "out_hidden_size": 512,
                      "fullatt_block_indexes": [1, 3, 5, 7], "window_size": 112}
            text = {"vocab_size": len(tokenizer), "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}}
        elif size == "small":  # 17.6 M parameters: trained from scratch on synthetic pages (bench learn, bench pretrain)
            vision = {"depth": 6, "hidden_size": 256, "intermediate_size": 768, "num_heads": 4, "out_hidden_size": 384,
                      "fullatt_block_indexes": [1, 3, 5], "window_size": 112}
            text = {"vocab_size": len(tokenizer), "hidden_size": 384, "intermediate_size": 1152, "num_hidden_layers": 6,
                    "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 8192,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}}
        else:
            vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                      "fullatt_block_indexes": [1], "window_size": 112}
            text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 8192,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}}
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["im_end_token"], pad_token_id=tokenizer.pad_token_id)
        return Qwen2_5_VLConfig(
            vision_config=vision, text_config=text,
            image_token_id=ids["image_token"], video_token_id=ids["video_token"],
            vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"],
        )
