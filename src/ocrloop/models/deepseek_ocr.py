"""DeepSeek-OCR (v1): a native port on transformers' own modules (``deepseek_ocr_model``); no remote code runs.

A page becomes one global view of side S (and, in gundam mode, local tiles). Each view of side S yields S/64 rows of
S/64 features plus a newline feature; local tiles come first, then the global view, then one view separator. Pixels
are normalized with mean and std 0.5. The plan's modes: tiny 512, small 640, base 1024, large 1280 (one global view;
64/100/256/400 tokens before newlines) and gundam (1024 global view + 640 tiles, 2 to 9 of them by aspect ratio, for
pages larger than 640 px).

It shares DeepSeek-OCR-2's decoder and SAM encoder classes, so it shares that family's output cleaning, MoE-expert
LoRA parameters and bounded SAM attention memory. Unsloth does not know this architecture: it trains on the hf
backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ocrloop.models.base import RESOLUTIONS, EncodedExample, ModelError, OCRModel
from ocrloop.models.deepseek_ocr2 import DeepseekOcr2Family

_MODES = {  # global view side, tile side, tiles allowed
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
_FEATURE_STRIDE = 64  # 16 px patches, then 4x downsampling in the SAM neck
# The class the published config.json names (the port's models save under it too); the name alone tells this model
# from others of type "deepseek_vl_v2" (DeepSeek-VL2, DeepSeek-OCR-2's own remote-code release).
PUBLISHED_ARCHITECTURE = "DeepseekOCRForCausalLM"


def _to_tensor(image: Image.Image) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - 0.5) / 0.5


def _global_view(image: Image.Image, side: int) -> Image.Image:
    if side <= 640:  # small views are stretched, as DeepSeek-OCR does
        return image.resize((side, side), Image.Resampling.BICUBIC)
    return ImageOps.pad(image, (side, side), color=(127, 127, 127), method=Image.Resampling.BICUBIC)


def _tile_grid(width: int, height: int, tile: int, low: int = 2, high: int = 9) -> tuple[int, int]:
    """Tiles across and down whose aspect ratio is closest to the page's (ties: more tiles)."""
    aspect = width / height
    best, best_error = (1, 1), float("inf")
    for count in range(low, high + 1):
        for across in range(1, count + 1):
            if count % across:
                continue
            down = count // across
            error = abs(aspect - across / down)
            if error < best_error or (error == best_error and width * height > 0.5 * tile * tile * across * down):
                best, best_error = (across, down), error
    return best


def _layout(width: int, height: int, resolution: str) -> tuple[int, int, int, int]:
    """``(global side, tile side, tiles across, tiles down)`` of a page; 1 x 1 means no tiles."""
    base_size, tile_size, crop = _MODES[resolution]
    if crop and (width > tile_size or height > tile_size):
        return (base_size, tile_size, *_tile_grid(width, height, tile_size))
    return base_size, tile_size, 1, 1


def _image_tokens(base_size: int, tile_size: int, across: int, down: int) -> int:
    """Image tokens of a page laid out as ``_layout`` says: rows of features plus a newline each, per view grid, and
    one view separator."""
    side = math.ceil(base_size / _FEATURE_STRIDE)
    tokens = side * (side + 1) + 1
    if across * down > 1:
        tile_side = math.ceil(tile_size / _FEATURE_STRIDE)
        tokens += (tile_side * down) * (tile_side * across + 1)
    return tokens


class DeepseekOcrFamily(DeepseekOcr2Family):
    name = "deepseek-ocr"
    model_types = ("deepseek_vl_v2",)
    unsloth_supported = False
    pixel_keys = ("pixel_values", "pixel_values_local")
    feature_input_keys = ("pixel_values", "pixel_values_local", "num_local_patches", "images_spatial_crop")
    resolutions = tuple(RESOLUTIONS)
    vision_parameter_markers = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_separator")
    lora_patterns = {
        "attention": r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
        "mlp": r".*language_model\.layers\.\d+\.mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj)",
        "experts": None,  # fused expert weights are parameters, not modules: see lora_target_parameters
        "vision": (r".*sam_model\.layers\.\d+\.(attn\.(qkv|proj)|mlp\.(lin1|lin2))"
                   r"|.*vision_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
                   r"|.*model\.projector"),
    }

    def accepts(self, config: dict[str, Any]) -> bool:
        architectures = config.get("architectures") or [PUBLISHED_ARCHITECTURE]
        return config.get("model_type") in self.model_types and PUBLISHED_ARCHITECTURE in architectures

    def model_class(self) -> Any:
        from ocrloop.models.deepseek_ocr_model import DeepseekOcrForConditionalGeneration

        return DeepseekOcrForConditionalGeneration

    def load_processors(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        from ocrloop.models.deepseek_ocr_model import DeepseekOcrConfig

        # With the config given, AutoTokenizer does not guess one from config.json (transformers has no such type);
        # an adapter's folder has none.
        has_config = (Path(path) / "config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(path, **({"config": DeepseekOcrConfig.from_pretrained(path)} if has_config else {}))
        if tokenizer.convert_tokens_to_ids(self.image_token) in (None, tokenizer.unk_token_id):
            raise ModelError(f"{path}: the tokenizer has no <image> token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, None  # the checkpoint has no image processor: ocrloop prepares pixels itself

    def save_processors(self, bundle: OCRModel, path: Path) -> None:
        bundle.tokenizer.save_pretrained(path)

    def image_tokens_for(self, bundle: OCRModel, width: int, height: int, resolution: str) -> int:
        self.check_resolution(resolution)
        return _image_tokens(*_layout(width, height, resolution))

    def prompt_ids_for(self, bundle: OCRModel, prompt: str, image_tokens: int) -> list[int]:
        tokenizer = bundle.tokenizer
        before, after = self.format_prompt(prompt, "<image>").split("<image>", 1)
        image_id = tokenizer.convert_tokens_to_ids(self.image_token)
        return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + \
            tokenizer(before, add_special_tokens=False)["input_ids"] + [image_id] * image_tokens + \
            tokenizer(after, add_special_tokens=False)["input_ids"]

    def encode(self, bundle: OCRModel, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        self.check_resolution(resolution)
        base_size, tile_size, across, down = _layout(image.width, image.height, resolution)
        image_tokens = _image_tokens(base_size, tile_size, across, down)
        vision = {"pixel_values": _to_tensor(_global_view(image, base_size)).unsqueeze(0),
                  "num_local_patches": torch.tensor([across * down if across * down > 1 else 0]),
                  "images_spatial_crop": torch.tensor([[across, down]])}
        if across * down > 1:
            canvas = image.resize((tile_size * across, tile_size * down), Image.Resampling.BICUBIC)
            vision["pixel_values_local"] = torch.stack([
                _to_tensor(canvas.crop((x * tile_size, y * tile_size, (x + 1) * tile_size, (y + 1) * tile_size)))
                for y in range(down) for x in range(across)
            ])
        return self._join(bundle, self.prompt_ids_for(bundle, prompt, image_tokens), target, vision, image_tokens)

    def save_random_processors(self, tokenizer: Any, path: Path) -> None:
        """Nothing beyond the tokenizer: the published checkpoint has no processor files."""

    def random_config(self, size: str, tokenizer: Any) -> Any:
        from ocrloop.models.deepseek_ocr_model import DeepseekOcrConfig

        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if size == "full":  # the published architecture (3.34 B parameters)
            return DeepseekOcrConfig(language_config=ids, image_token_id=image_token_id)
        language = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 4,
                    "num_experts_per_tok": 2, "n_shared_experts": 1, "max_position_embeddings": 4096, **ids}
        vision = {"image_size": 1024, "width": {
            "clip-l-14-224": {"heads": 4, "image_size": 224, "layers": 2, "patch_size": 14, "width": 64},
            "sam_vit_b": {"downsample_channels": [32, 64], "global_attn_indexes": [1], "heads": 2, "layers": 2,
                          "width": 32, "neck_channels": 16, "mlp_dim": 64}}}
        return DeepseekOcrConfig(language_config=language, vision_config=vision, image_token_id=image_token_id)
