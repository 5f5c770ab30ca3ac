"""DeepSeek-OCR (v1): the checkpoint folder's own remote code (``trust_remote_code``).

Its forward takes ``images`` (one ``(local tiles, global view)`` pair per sample),
``images_seq_mask`` (where the image tokens are) and ``images_spatial_crop`` (tiles across,
tiles down). Each view of side S yields (S/64) rows of S/64 features plus a newline feature;
local tiles come first, then the global view, then one view separator. Pixels are
normalized with mean and std 0.5. The plan's modes: tiny 512, small 640, base 1024,
large 1280 (one global view; 64/100/256/400 tokens before newlines) and gundam (1024
global view + 640 tiles, 2 to 9 of them by aspect ratio).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ocrloop.models.base import EncodedExample, ModelError, OCRFamily, OCRModel

_MODES = {  # base_size (global view), image_size (tiles), crop
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
_FEATURE_STRIDE = 64  # 16 px patches, then 4x downsampling in the SAM neck


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


class DeepseekOcrFamily(OCRFamily):
    name = "deepseek-ocr"
    model_types = ("deepseek_vl_v2",)
    trust_remote_code = True
    pixel_keys = ()  # pixels travel inside ``images`` and are cast by ``finish_batch``
    vision_parameter_markers = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")
    lora_patterns = {
        "attention": r".*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)",
        "mlp": r".*layers\.\d+\.mlp\.(shared_experts\.)?(gate_proj|up_proj|down_proj)",
        "experts": r".*layers\.\d+\.mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)",
        "vision": r".*(sam_model|vision_model)\..*\.(qkv|proj|q_proj|k_proj|v_proj|out_proj|fc1|fc2|lin1|lin2)|.*projector\.layers(\.\d+)?",
    }

    def model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def load_processors(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        if tokenizer.convert_tokens_to_ids(self.image_token) in (None, tokenizer.unk_token_id):
            raise ModelError(f"{path}: the tokenizer has no <image> token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, None  # the remote code has no image processor: ocrloop prepares pixels itself

    def save_processors(self, bundle: OCRModel, path: Path) -> None:
        bundle.tokenizer.save_pretrained(path)

    def encode(self, bundle: OCRModel, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        self.check_resolution(resolution)
        base_size, tile_size, crop = _MODES[resolution]
        if crop and (image.width > tile_size or image.height > tile_size):
            across, down = _tile_grid(image.width, image.height, tile_size)
            canvas = image.resize((tile_size * across, tile_size * down), Image.Resampling.BICUBIC)
            tiles = torch.stack([
                _to_tensor(canvas.crop((x * tile_size, y * tile_size, (x + 1) * tile_size, (y + 1) * tile_size)))
                for y in range(down) for x in range(across)
            ])
        else:
            across = down = 1
            tiles = torch.zeros(1, 3, tile_size, tile_size)  # the remote code's "no tiles" marker
        global_view = _to_tensor(_global_view(image, base_size)).unsqueeze(0)
        side = math.ceil(base_size / _FEATURE_STRIDE)
        image_tokens = side * (side + 1) + 1
        if across * down > 1:
            tile_side = math.ceil(tile_size / _FEATURE_STRIDE)
            image_tokens += (tile_side * down) * (tile_side * across + 1)
        tokenizer = bundle.tokenizer
        before, after = self.format_prompt(prompt, "<image>").split("<image>", 1)
        image_id = tokenizer.convert_tokens_to_ids(self.image_token)
        prompt_ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + \
            tokenizer(before, add_special_tokens=False)["input_ids"] + [image_id] * image_tokens + \
            tokenizer(after, add_special_tokens=False)["input_ids"]
        vision = {"tiles": tiles, "global_view": global_view, "images_spatial_crop": torch.tensor([[across, down]])}
        return self._join(bundle, prompt_ids, target, vision, image_tokens)

    def collate_vision(self, visions: list[dict[str, torch.Tensor]], batch: dict[str, Any], tokenizer: Any, dtype: torch.dtype | None) -> None:
        image_id = tokenizer.convert_tokens_to_ids(self.image_token)
        cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)
        batch["images"] = [(cast(v["tiles"]), cast(v["global_view"])) for v in visions]
        batch["images_spatial_crop"] = torch.cat([v["images_spatial_crop"] for v in visions])
        batch["images_seq_mask"] = batch["input_ids"] == image_id

    def random_config(self, size: str, tokenizer: Any) -> Any:
        raise ModelError("deepseek-ocr (v1) is remote code: ocrloop cannot build it; download the checkpoint folder")
