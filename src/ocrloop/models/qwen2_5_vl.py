"""Qwen2.5-VL: native ``Qwen2_5_VLForConditionalGeneration`` of transformers.

The tokenizer and the PIL image processor are used directly (not ``Qwen2_5_VLProcessor``,
which insists on a torchvision video processor that OCR never needs). Resolution modes are
pixel budgets: the page is resized to at most side x side pixels, one token per 28x28 area.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


class Qwen25VLFamily(OCRFamily):
    name = "qwen2.5-vl"
    image_token = "<|image_pad|>"
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
        side = RESOLUTIONS[resolution][0] if resolution != "gundam" else 1600
        processor = bundle.image_processor
        pixels = processor(images=[image], size={"shortest_edge": _MIN_PIXELS, "longest_edge": side * side}, return_tensors="pt")
        image_tokens = int(pixels["image_grid_thw"][0].prod()) // processor.merge_size**2
        placeholder = "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>"
        instruction = self.format_prompt(prompt, placeholder).replace("<|grounding|>", "")
        text = f"<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
        prompt_ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"]
        vision = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
        return self._join(bundle, prompt_ids, target, vision, image_tokens)

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
        elif size == "small":  # about 25 M parameters: trained from scratch on synthetic pages (bench learn)
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
