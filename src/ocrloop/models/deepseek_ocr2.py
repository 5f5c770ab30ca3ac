"""DeepSeek-OCR-2: native ``DeepseekOcr2ForConditionalGeneration`` of transformers.

Its vision tower has learned queries for 768 px and 1024 px views only, so the plan's
``tiny`` and ``large`` modes do not exist here. Modes: ``small`` = one 768 view (145 image
tokens), ``base`` = one 1024 view (257), ``gundam`` = 1024 view + 2..6 local 768 tiles
(the checkpoint's default, 257 + 144 per tile).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image

from ocrloop.models.base import VISION_ATTENTION_BYTES, EncodedExample, OCRFamily, OCRModel, ceil_div

_MODES = {
    "small": {"crop_to_patches": False, "size": 768, "tile_size": 768},
    "base": {"crop_to_patches": False, "size": 1024, "tile_size": 1024},
    "gundam": {"crop_to_patches": True, "size": 1024, "tile_size": 768, "min_patches": 2, "max_patches": 6},
}
_GROUNDING = re.compile(r"<\|ref\|>.*?<\|/ref\|><\|det\|>.*?<\|/det\|>\n?|<\|grounding\|>", re.DOTALL)


class DeepseekOcr2Family(OCRFamily):
    name = "deepseek-ocr-2"
    model_types = ("deepseek_ocr2",)
    pixel_keys = ("pixel_values", "pixel_values_local")
    feature_input_keys = ("pixel_values", "pixel_values_local", "num_local_patches")
    resolutions = tuple(_MODES)
    vision_parameter_markers = ("vision_tower.", "multi_modal_projector.", "view_separator")
    lora_patterns = {
        "attention": r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
        "mlp": r".*language_model\.layers\.\d+\.mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj)",
        "experts": None,  # fused expert weights are parameters, not modules: see lora_target_parameters
        "vision": (r".*vision_tower\.sam_encoder\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2))"
                   r"|.*vision_tower\.vision_encoder\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
                   r"|.*multi_modal_projector"),
    }

    def model_class(self) -> Any:
        from transformers import DeepseekOcr2ForConditionalGeneration

        return DeepseekOcr2ForConditionalGeneration

    def load_processors(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoTokenizer
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

        return AutoTokenizer.from_pretrained(path), DeepseekOcr2ImageProcessorPil.from_pretrained(path)

    def lora_target_parameters(self, groups: list[str]) -> list[str]:
        return ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if "experts" in groups else []

    @contextmanager
    def bounded_vision_memory(self, model: Any, budget_bytes: int = VISION_ATTENTION_BYTES) -> Iterator[None]:
        # SAM's attention adds a relative-position bias that is materialized for every view and head
        # (views x 12 x tokens^2: 400 MB for one 1024 view), so its peak grows with the views per pass.
        from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2SamVisionAttention

        modules = [m for m in model.modules() if isinstance(m, DeepseekOcr2SamVisionAttention) and m.use_rel_pos]
        for module in modules:
            module.forward = _views_at_a_time(module, budget_bytes)
        try:
            yield
        finally:
            for module in modules:
                module.__dict__.pop("forward", None)

    def encode(self, bundle: OCRModel, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        self.check_resolution(resolution)
        mode = dict(_MODES[resolution])
        size, tile = mode.pop("size"), mode.pop("tile_size")
        processor = bundle.image_processor
        pixels = processor(images=[image], size={"height": size, "width": size}, tile_size=tile, return_tensors="pt", **mode)
        local_tiles = int(pixels["num_local_patches"][0])
        patch, downsample = 16, 4  # SAM patch size and the neck's downsampling
        image_tokens = ceil_div(size, patch * downsample) ** 2 + ceil_div(tile, patch * downsample) ** 2 * local_tiles + 1
        text = self.format_prompt(prompt, "<image>").replace("<image>", self.image_token * image_tokens, 1)
        prompt_ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
        if bundle.tokenizer.bos_token_id is not None:
            prompt_ids = [bundle.tokenizer.bos_token_id] + prompt_ids
        vision = {"pixel_values": pixels["pixel_values"], "num_local_patches": torch.tensor([local_tiles])}
        if local_tiles:
            vision["pixel_values_local"] = pixels["pixel_values_local"]
        return self._join(bundle, prompt_ids, target, vision, image_tokens)

    def clean_output(self, text: str) -> str:
        return _GROUNDING.sub("", text).strip()

    def special_tokens(self) -> dict[str, str]:
        return {"image_token": "<image>"}

    def save_random_processors(self, tokenizer: Any, path: Path) -> None:
        from transformers import DeepseekOcr2Processor
        from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

        DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessorPil(), tokenizer=tokenizer).save_pretrained(path)

    def random_config(self, size: str, tokenizer: Any) -> Any:
        from transformers import DeepseekOcr2Config

        if size == "full":  # the published DeepSeek-OCR-2 architecture (3.39 B parameters)
            sam = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "global_attn_indexes": [2, 5, 8, 11],
                   "downsample_channels": [512, 896]}
            encoder = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                       "num_key_value_heads": 2}
            text = {"vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848, "num_hidden_layers": 12,
                    "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64, "n_shared_experts": 2,
                    "num_experts_per_tok": 6, "moe_intermediate_size": 896, "mlp_layer_types": ["dense"] + ["sparse"] * 11,
                    "max_position_embeddings": 8192}
        else:
            sam = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "global_attn_indexes": [1],
                   "output_channels": 16, "downsample_channels": [32, 64], "mlp_dim": 64}
            encoder = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "vocab_size": 16}
            text = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 4, "n_shared_experts": 1,
                    "num_experts_per_tok": 2, "moe_intermediate_size": 32, "mlp_layer_types": ["dense", "sparse"],
                    "max_position_embeddings": 4096}
        text.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return DeepseekOcr2Config(vision_config={"sam_config": sam, "encoder_config": encoder}, text_config=text,
                                  image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def _views_at_a_time(module: Any, budget_bytes: int) -> Callable:
    """``module``'s forward over chunks of views whose attention bias fits ``budget_bytes``."""
    forward = type(module).forward.__get__(module)

    def chunked(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        views, height, width, _ = hidden_states.shape
        bias_bytes = module.num_attention_heads * (height * width) ** 2 * hidden_states.element_size()
        step = max(1, budget_bytes // bias_bytes)
        if views <= step:
            return forward(hidden_states, *args, **kwargs)
        parts = [forward(chunk, *args, **kwargs) for chunk in hidden_states.split(step)]
        weights = [weight for _, weight in parts]
        return torch.cat([out for out, _ in parts]), None if any(w is None for w in weights) else torch.cat(weights)

    return chunked
