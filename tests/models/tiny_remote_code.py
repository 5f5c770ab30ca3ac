"""A tiny model folder with its own modeling code, shaped like DeepSeek-OCR (v1)'s remote code.

It has the same forward interface (``images`` as (tiles, global view) pairs,
``images_seq_mask``, ``images_spatial_crop``) and the same feature layout (rows of S/64
features plus a newline feature; tiles, then the global view, then a view separator), so
ocrloop's ``deepseek-ocr`` family is exercised through ``trust_remote_code`` exactly as with
the real checkpoint, without downloading it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MODELING = '''
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class TinyOcrConfig(PretrainedConfig):
    model_type = "deepseek_vl_v2"

    def __init__(self, vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_token_id=4, **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.image_token_id = image_token_id
        super().__init__(**kwargs)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(size, size), nn.Linear(size, size)
        self.v_proj, self.o_proj = nn.Linear(size, size), nn.Linear(size, size)

    def forward(self, x, mask):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.hidden_size
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(size, 2 * size), nn.Linear(size, 2 * size), nn.Linear(2 * size, size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn, self.mlp = Attention(config), Mlp(config)
        self.norm1, self.norm2 = nn.LayerNorm(config.hidden_size), nn.LayerNorm(config.hidden_size)

    def forward(self, x, mask):
        x = x + self.self_attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        size = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, size)
        self.sam_model = nn.Conv2d(3, size, kernel_size=64, stride=64)  # one feature per 64x64 px, as DeepSeek-OCR
        self.projector = nn.Linear(size, size)
        self.image_newline = nn.Parameter(torch.randn(size) * 0.02)
        self.view_seperator = nn.Parameter(torch.randn(size) * 0.02)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(size)

    def grid(self, pixels):
        features = self.sam_model(pixels).permute(0, 2, 3, 1)  # (n, rows, cols, d)
        return features

    def with_newlines(self, features):
        rows = features.shape[0]
        return torch.cat([features, self.image_newline.expand(rows, 1, -1)], dim=1).reshape(-1, features.shape[-1])

    def image_features(self, tiles, global_view, crop):
        across, down = int(crop[0]), int(crop[1])
        parts = []
        if tiles.abs().sum() != 0:
            local = self.grid(tiles)  # (down*across, s, s, d)
            n, s, _, d = local.shape
            local = local.view(down, across, s, s, d).permute(0, 2, 1, 3, 4).reshape(down * s, across * s, d)
            parts.append(self.with_newlines(local))
        parts.append(self.with_newlines(self.grid(global_view)[0]))
        parts.append(self.view_seperator[None, :])
        return self.projector(torch.cat(parts, dim=0))


class TinyOcrForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TinyOcrConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, labels=None, images=None, images_seq_mask=None,
                images_spatial_crop=None, **kwargs):
        embeds = self.model.embed_tokens(input_ids).clone()
        if images is not None and input_ids.shape[1] != 1:
            for row, (tiles, global_view) in enumerate(images):
                features = self.model.image_features(tiles, global_view, images_spatial_crop[row]).to(embeds.dtype)
                embeds[row] = embeds[row].masked_scatter(images_seq_mask[row].unsqueeze(-1), features)
        t = input_ids.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=embeds.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        hidden = embeds
        for layer in self.model.layers:
            hidden = layer(hidden, mask)
        logits = self.lm_head(self.model.norm(hidden)).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, images=None, images_seq_mask=None,
                                      images_spatial_crop=None, **kwargs):
        # No KV cache: the whole sequence is run each step, with the image mask of the grown sequence.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "images": images,
                "images_seq_mask": input_ids == self.config.image_token_id, "images_spatial_crop": images_spatial_crop}
'''


def write_tiny_remote_code_model(folder: Path) -> Path:
    """Write the tiny remote-code model (code, config with ``auto_map``, weights, tokenizer) to ``folder``."""
    import tempfile

    import torch

    from ocrloop.models.tokenizer import build_tiny_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    source = Path(tempfile.mkdtemp(prefix="tinyocr-")) / "modeling_tinyocr.py"  # save_pretrained copies it
    source.write_text(MODELING)
    spec = importlib.util.spec_from_file_location("modeling_tinyocr", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_tinyocr"] = module
    spec.loader.exec_module(module)
    tokenizer = build_tiny_tokenizer({"image_token": "<image>"})
    config = module.TinyOcrConfig(vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
    module.TinyOcrConfig.register_for_auto_class()
    module.TinyOcrForCausalLM.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    model = module.TinyOcrForCausalLM(config)
    model.generation_config.use_cache = False
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
