"""DeepSeek-OCR (v1) built from transformers' own modules; it loads the published checkpoint by its weight names.

The published checkpoint (``deepseek-ai/DeepSeek-OCR``) ships model code written for transformers 4.46 that
transformers 5 cannot import. Nothing of it runs here. Its architecture is assembled from parts transformers has:

* DeepEncoder: a SAM-base tower (DeepSeek-OCR-2's SAM encoder class, with v1's 512/1024 downsampling convolutions)
  turns a view into a 16x-compressed feature map. That map is also CLIP-L's patch embedding: CLIP-L (transformers'
  CLIP encoder) runs over it, and its output without the class token is concatenated with SAM's features
  (1024 + 1024 channels), then projected linearly to the decoder's width.
* Each row of a view's features ends with a learned newline; a learned separator follows the views of a page.
  Local tiles (gundam mode) come first, then the global view.
* The decoder is DeepSeek-OCR-2's text model: the same DeepSeek-V2 MoE decoder with plain multi-head attention.

``PUBLISHED_NAMES`` maps the checkpoint's weight names to these modules once; saving writes them back
(``save_pretrained`` reverses the table), so a checkpoint written here has the published layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import Chunk, Concatenate, MergeModulelist, WeightConverter, WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPPreTrainedModel, CLIPVisionEmbeddings
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig, DeepseekOcr2TextConfig
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2SamVisionEncoder, DeepseekOcr2TextModel

from ocrloop.atomic import atomic_write_json
from ocrloop.models.base import ModelError
from ocrloop.models.deepseek_ocr import PUBLISHED_ARCHITECTURE

# The published DeepSeek-OCR architecture (its config.json and its 2,710 weight shapes).
PUBLISHED_LANGUAGE = {
    "vocab_size": 129280, "hidden_size": 1280, "intermediate_size": 6848, "moe_intermediate_size": 896,
    "num_hidden_layers": 12, "num_attention_heads": 10, "num_key_value_heads": 10, "n_routed_experts": 64,
    "num_experts_per_tok": 6, "n_shared_experts": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "max_position_embeddings": 8192, "n_group": 1, "topk_group": 1, "topk_method": "greedy", "norm_topk_prob": False,
    "routed_scaling_factor": 1.0, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "use_mla": False, "hidden_act": "silu",
    "bos_token_id": 0, "eos_token_id": 1,
}
PUBLISHED_VISION = {
    "image_size": 1024, "model_name": "deeplip_b_l",
    "width": {
        "clip-l-14-224": {"heads": 16, "image_size": 224, "layers": 24, "patch_size": 14, "width": 1024},
        "sam_vit_b": {"downsample_channels": [512, 1024], "global_attn_indexes": [2, 5, 8, 11], "heads": 12,
                      "layers": 12, "width": 768},
    },
}
SAM_NECK_CHANNELS = 256  # the published SAM neck's width (fixed by its code, not in config.json)

def _in_clip_tower(converter: WeightConverter) -> WeightConverter:
    """``converter`` limited to keys under ``model.vision_model.``: the decoder's attention has the same leaf names."""
    converter.scope_prefix, converter.base_model_prefix = "vision_model", "model"
    return converter


# Published weight name (regex) -> this module's name. Renamings chain in order; converters then reshape.
PUBLISHED_NAMES: list[WeightRenaming | WeightConverter] = [
    WeightRenaming(r"sam_model\.blocks\.(\d+)\.norm1\.", r"sam_model.layers.\1.layer_norm1."),
    WeightRenaming(r"sam_model\.blocks\.(\d+)\.norm2\.", r"sam_model.layers.\1.layer_norm2."),
    WeightRenaming(r"sam_model\.blocks\.(\d+)\.attn\.", r"sam_model.layers.\1.attn."),
    WeightRenaming(r"sam_model\.blocks\.(\d+)\.mlp\.", r"sam_model.layers.\1.mlp."),
    WeightRenaming(r"sam_model\.patch_embed\.proj\.", "sam_model.patch_embed.projection."),
    WeightRenaming(r"sam_model\.neck\.0\.", "sam_model.neck.conv1."),
    WeightRenaming(r"sam_model\.neck\.1\.", "sam_model.neck.layer_norm1."),
    WeightRenaming(r"sam_model\.neck\.2\.", "sam_model.neck.conv2."),
    WeightRenaming(r"sam_model\.neck\.3\.", "sam_model.neck.layer_norm2."),
    WeightRenaming(r"sam_model\.net_2\.", "sam_model.proj.conv1."),
    WeightRenaming(r"sam_model\.net_3\.", "sam_model.proj.conv2."),
    WeightRenaming(r"vision_model\.transformer\.layers\.", "vision_model.encoder.layers."),
    WeightRenaming(r"projector\.layers\.", "projector."),
    WeightRenaming(r"view_seperator", "view_separator"),  # sic: the published spelling
    WeightRenaming(r"^model\.embed_tokens\.", "model.language_model.embed_tokens."),
    WeightRenaming(r"^model\.layers\.", "model.language_model.layers."),
    WeightRenaming(r"^model\.norm\.", "model.language_model.norm."),
    # CLIP-L's fused query/key/value projection, split into transformers' three (q first, as it is laid out).
    *(_in_clip_tower(WeightConverter(f"self_attn.qkv_proj.{kind}", [f"self_attn.{p}_proj.{kind}" for p in "qkv"],
                                     operations=[Chunk(dim=0)])) for kind in ("weight", "bias")),
    # One module per routed expert in the checkpoint; transformers keeps each layer's experts as fused tensors.
    WeightConverter(["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"], "mlp.experts.gate_up_proj",
                    operations=[MergeModulelist(dim=0), Concatenate(dim=1)]),
    WeightConverter("mlp.experts.*.down_proj.weight", "mlp.experts.down_proj", operations=[MergeModulelist(dim=0)]),
]


class DeepseekOcrError(ModelError):
    """The checkpoint's config asks for something this port does not implement."""


class DeepseekOcrConfig(PreTrainedConfig):
    """The published ``config.json``: the decoder in ``language_config`` (repeated at the top level, as published),
    the two vision towers' sizes in ``vision_config.width``, the projector in ``projector_config``."""

    model_type = "deepseek_vl_v2"
    sub_configs = {"text_config": DeepseekOcr2TextConfig, "sam_config": DeepseekOcr2SamVisionConfig,
                   "clip_config": CLIPVisionConfig}

    language_config: dict | None = None
    vision_config: dict | None = None
    projector_config: dict | None = None
    image_token_id: int = 128815
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # The published file repeats the decoder's fields at the top level; language_config is the one read.
        for key in PUBLISHED_LANGUAGE:
            kwargs.pop(key, None)
        for key in self.sub_configs:
            kwargs.pop(key, None)
        self.language_config = {**PUBLISHED_LANGUAGE, **(self.language_config or {})}
        self.vision_config = self.vision_config or PUBLISHED_VISION
        language, width = self.language_config, self.vision_config["width"]
        sam, clip = width["sam_vit_b"], width["clip-l-14-224"]
        self.projector_config = self.projector_config or {
            "projector_type": "linear", "input_dim": clip["width"] + sam["downsample_channels"][-1],
            "n_embed": language["hidden_size"]}
        _check_supported(language, sam, clip, self.projector_config)
        dense = language["first_k_dense_replace"]
        self.text_config = DeepseekOcr2TextConfig(
            **{key: language[key] for key in (
                "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok",
                "n_shared_experts", "max_position_embeddings", "n_group", "topk_group", "topk_method",
                "routed_scaling_factor", "rms_norm_eps", "hidden_act", "bos_token_id", "eos_token_id")},
            pad_token_id=language.get("pad_token_id"),
            mlp_layer_types=["dense"] * dense + ["sparse"] * (language["num_hidden_layers"] - dense),
            rope_parameters={"rope_type": "default", "rope_theta": language["rope_theta"]},
        )
        self.sam_config = DeepseekOcr2SamVisionConfig(
            hidden_size=sam["width"], num_hidden_layers=sam["layers"], num_attention_heads=sam["heads"],
            global_attn_indexes=list(sam["global_attn_indexes"]), downsample_channels=list(sam["downsample_channels"]),
            output_channels=sam.get("neck_channels", SAM_NECK_CHANNELS), image_size=self.vision_config["image_size"],
            mlp_dim=sam.get("mlp_dim"))
        self.clip_config = CLIPVisionConfig(
            hidden_size=clip["width"], intermediate_size=clip.get("mlp_dim", 4 * clip["width"]),
            num_hidden_layers=clip["layers"], num_attention_heads=clip["heads"], image_size=clip["image_size"],
            patch_size=clip["patch_size"], hidden_act="quick_gelu", layer_norm_eps=1e-5)
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        for key in self.sub_configs:
            values.pop(key, None)
        return {**values, **self.language_config}  # the decoder's fields at the top level too, as published


def _check_supported(language: dict, sam: dict, clip: dict, projector: dict) -> None:
    """Refuse, by name, configs whose published code paths this port does not implement."""
    if language.get("use_mla"):
        raise DeepseekOcrError("language_config.use_mla=true (multi-head latent attention) is not DeepSeek-OCR's decoder")
    if language.get("scoring_func", "softmax") != "softmax":
        raise DeepseekOcrError(f"language_config.scoring_func={language['scoring_func']!r}: the native port routes by softmax")
    if language.get("norm_topk_prob"):
        raise DeepseekOcrError("language_config.norm_topk_prob=true is not implemented by the native port")
    if language.get("moe_layer_freq", 1) != 1:
        raise DeepseekOcrError("language_config.moe_layer_freq other than 1 is not implemented by the native port")
    if language.get("rope_scaling"):
        raise DeepseekOcrError("language_config.rope_scaling is not implemented by the native port")
    if projector.get("projector_type") != "linear":
        raise DeepseekOcrError(f"projector_type {projector.get('projector_type')!r}: the native port has the linear one")
    if projector["input_dim"] != clip["width"] + sam["downsample_channels"][-1]:
        raise DeepseekOcrError("projector_config.input_dim must be CLIP's width plus SAM's last downsample channels")
    if clip["width"] != sam["downsample_channels"][-1]:
        raise DeepseekOcrError("SAM's last downsample channels must equal CLIP's width (SAM features are its patches)")


class DeepseekOcrClipTower(CLIPPreTrainedModel):
    """CLIP-L over SAM's feature map: SAM's features are its patch embeddings; no final layer norm."""

    config: CLIPVisionConfig

    def __init__(self, config: CLIPVisionConfig):
        super().__init__(config)
        self.embeddings = CLIPVisionEmbeddings(config)  # its patch_embedding is loaded but never used, as published
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: transformers' spelling
        self.encoder = CLIPEncoder(config)
        self.post_init()

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        """``sam_features`` (views, channels, h, w) -> (views, 1 + h*w, width), class token first."""
        patches = sam_features.flatten(2).transpose(1, 2)
        views, count, _ = patches.shape
        cls = self.embeddings.class_embedding.expand(views, 1, -1).to(patches.dtype)
        hidden = torch.cat([cls, patches], dim=1) + self._positions(count).to(patches.dtype)
        return self.encoder(self.pre_layrnorm(hidden)).last_hidden_state

    def _positions(self, patches: int) -> torch.Tensor:
        """Position embeddings for ``patches`` (a square grid): the trained grid resized bicubically (antialiased)."""
        table = self.embeddings.position_embedding.weight
        source, target = math.isqrt(table.shape[0] - 1), math.isqrt(patches)
        if source == target:
            return table.unsqueeze(0)
        grid = table[1:].reshape(1, source, source, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(target, target), mode="bicubic", antialias=True, align_corners=False)
        grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(target * target, -1)
        return torch.cat([table[:1], grid]).unsqueeze(0)


class DeepseekOcrPreTrainedModel(PreTrainedModel):
    config: DeepseekOcrConfig
    config_class = DeepseekOcrConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = False  # SAM's relative-position bias
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # the decode step (no pixels) is the decoder alone
    _no_split_modules = ["DeepseekOcr2SamVisionLayer", "CLIPEncoderLayer", "DeepseekOcr2TextDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, DeepseekOcrModel):
            std = 1 / math.sqrt(self.config.text_config.hidden_size)
            module.image_newline.normal_(0.0, std)
            module.view_separator.normal_(0.0, std)
            # SAM starts its position tables at zero; random ones make a random-weight model's views depend on
            # where a patch is, so that comparisons against other implementations test the resizing of the tables.
            for name, parameter in module.sam_model.named_parameters():
                if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                    parameter.normal_(0.0, 0.02)


class DeepseekOcrModel(DeepseekOcrPreTrainedModel):
    def __init__(self, config: DeepseekOcrConfig):
        super().__init__(config)
        self.sam_model = DeepseekOcr2SamVisionEncoder(config.sam_config)
        self.vision_model = DeepseekOcrClipTower(config.clip_config)
        self.projector = nn.Linear(config.projector_config["input_dim"], config.projector_config["n_embed"])
        hidden = config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.empty(hidden))
        self.view_separator = nn.Parameter(torch.empty(hidden))
        self.language_model = DeepseekOcr2TextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _view_features(self, views: torch.Tensor) -> torch.Tensor:
        """(views, 3, S, S) pixels -> (views, S/64, S/64, decoder width) projected DeepEncoder features."""
        sam = self.sam_model(views).last_hidden_state  # (views, 1024, S/64, S/64)
        clip = self.vision_model(sam)[:, 1:]
        features = self.projector(torch.cat([clip, sam.flatten(2).transpose(1, 2)], dim=-1))
        side = sam.shape[-1]
        return features.view(views.shape[0], sam.shape[-2], side, -1)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """(rows, columns, width) -> rows x (columns + 1) features, a newline closing each row."""
        newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, grid.shape[-1])
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])

    def get_image_features(self, pixel_values: torch.Tensor, pixel_values_local: torch.Tensor | None = None,
                           num_local_patches: list[int] | torch.Tensor | None = None,
                           images_spatial_crop: torch.Tensor | None = None, **kwargs: Any) -> BaseModelOutputWithPooling:
        """Per page (``pooler_output``): local tiles' features with newlines (tiles across x down as one grid), the
        global view's with newlines, then the view separator."""
        global_views = self._view_features(pixel_values)
        counts = [0] * len(pixel_values) if num_local_patches is None else [int(n) for n in num_local_patches]
        local_views = self._view_features(pixel_values_local) if pixel_values_local is not None and sum(counts) else None
        separator = self.view_separator.to(global_views.dtype).unsqueeze(0)
        pages, offset = [], 0
        for index, count in enumerate(counts):
            parts = []
            if count:
                across, down = (int(v) for v in images_spatial_crop[index])
                tiles = local_views[offset:offset + count]
                offset += count
                _, rows, columns, width = tiles.shape
                grid = tiles.view(down, across, rows, columns, width).permute(0, 2, 1, 3, 4)
                parts.append(self._with_newlines(grid.reshape(down * rows, across * columns, width)))
            parts.append(self._with_newlines(global_views[index]))
            parts.append(separator)
            pages.append(torch.cat(parts))
        return BaseModelOutputWithPooling(last_hidden_state=global_views, pooler_output=pages)

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_local: torch.Tensor | None = None, num_local_patches: Any = None,
                images_spatial_crop: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None,
                **kwargs: Any) -> BaseModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            pages = self.get_image_features(pixel_values, pixel_values_local, num_local_patches, images_spatial_crop,
                                            return_dict=True).pooler_output
            features = torch.cat(pages).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(f"image features and image tokens do not match: {features.shape[0]} features, "
                                 f"{int(mask.sum())} tokens")
            inputs_embeds = inputs_embeds.masked_scatter(mask.to(inputs_embeds.device), features)
        return self.language_model(input_ids=None, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
                                   **kwargs)


class DeepseekOcrForConditionalGeneration(DeepseekOcrPreTrainedModel, GenerationMixin):
    """DeepSeek-OCR with its language-model head; ``generate`` reads pages."""

    def __init__(self, config: DeepseekOcrConfig):
        super().__init__(config)
        self.model = DeepseekOcrModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """Save in the published layout, ``config.json`` naming the published class (which vLLM and the published
        code know the checkpoint by) instead of this one."""
        super().save_pretrained(save_directory, *args, **kwargs)
        config_path = Path(save_directory) / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text())
            atomic_write_json(config_path, {**config, "architectures": [PUBLISHED_ARCHITECTURE]})

    def get_image_features(self, pixel_values: torch.Tensor, pixel_values_local: torch.Tensor | None = None,
                           num_local_patches: Any = None, images_spatial_crop: torch.Tensor | None = None,
                           **kwargs: Any) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, pixel_values_local, num_local_patches, images_spatial_crop)

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_local: torch.Tensor | None = None, num_local_patches: Any = None,
                images_spatial_crop: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values: Any = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                **kwargs: Any) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, pixel_values_local=pixel_values_local,
                             num_local_patches=num_local_patches, images_spatial_crop=images_spatial_crop,
                             attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values,
                             inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


register_checkpoint_conversion_mapping(DeepseekOcrForConditionalGeneration.__name__, PUBLISHED_NAMES, overwrite=True)
