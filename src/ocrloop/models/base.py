"""The one small interface every model family implements.

A family knows how to: recognise its checkpoints, load model + processors, turn a page and its
ground truth into a training example (prompt and image tokens masked out of the labels),
generate OCR text, clean that text, name its LoRA targets, and build a ``tiny`` random preset.
Shared mechanics (padding, batching, generation) live here once.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import Counter
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from ocrloop.errors import OcrloopError
from ocrloop.models.reading import ReadingSettings

IGNORE_INDEX = -100
# Prompts are padded to a multiple of this under fast decoding: pages of nearby lengths share compiled shapes.
FAST_DECODE_LENGTH_STEP = 64
# Attention kernels without cuDNN's: it plans every attention call on the CPU, and each new key length anew. Reads with
# a dynamic cache use these, since every decoded token is a new length (on an H200, 64 blocks read right after
# training took 10.5 s with it and 2.0 s without). Training does unless training.cudnn_attention.
WITHOUT_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

# The plan's prompt templates (DeepSeek-OCR wording); families adapt the image placeholder.
PROMPT_TEMPLATES = {
    "markdown": "<|grounding|>Convert the document to markdown.",
    "ocr": "<|grounding|>OCR this image.",
    "free": "Free OCR.",
    "figure": "Parse the figure.",
    "describe": "Describe this image in detail.",
    "locate": "Locate <|ref|>{ref}<|/ref|> in the image.",
}

# The plan's resolution modes: (side in pixels, DeepSeek-OCR vision tokens).
RESOLUTIONS = {"tiny": (512, 64), "small": (640, 100), "base": (1024, 256), "large": (1280, 400), "gundam": (1024, None)}

# Bytes one vision attention temporary may take when image features are computed (bounded_vision_memory).
VISION_ATTENTION_BYTES = 256 * 2**20


class ModelError(OcrloopError):
    """The model folder, family, mode or an input cannot be used."""


class ExampleTooLong(ModelError):
    """An example needs more tokens than the configured maximum sequence length."""


@dataclass
class EncodedExample:
    """One tokenized example: ids, labels (``IGNORE_INDEX`` outside the answer) and vision tensors."""

    input_ids: list[int]
    labels: list[int]
    vision: dict[str, torch.Tensor]
    image_tokens: int
    feature_key: str | None = None  # set when the page's image features come from a FeatureCache

    def __len__(self) -> int:
        return len(self.input_ids)


def model_lock(model: Any) -> threading.Lock:
    """The one lock of ``model`` that its adapter bundles read and attach under."""
    return model.__dict__.setdefault("_ocrloop_adapter_lock", threading.Lock())


def _adapter_readers(model: Any) -> Counter:
    """How many live bundles read with each adapter of ``model``."""
    return model.__dict__.setdefault("_ocrloop_adapter_readers", Counter())


def _reader_gone(model: Any, adapter: str) -> None:
    _adapter_readers(model)[adapter] -= 1


def drop_unread_adapters(model: Any) -> None:
    """Delete the adapters of ``model`` that no live bundle reads with any more (a replaced champion's), keeping at
    least one. Called with ``model_lock`` held, between reads, never inside one."""
    readers = _adapter_readers(model)
    for adapter, count in list(readers.items()):  # a snapshot: a finalizer may change counts meanwhile
        if count > 0:
            continue
        del readers[adapter]
        if adapter in model.peft_config and len(model.peft_config) > 1:
            if model.active_adapter == adapter:
                model.set_adapter(next(name for name in model.peft_config if name != adapter))
            model.delete_adapter(adapter)


@dataclass
class OCRModel:
    """A loaded model with its tokenizer and image processor, ready to train or read pages."""

    family: "OCRFamily"
    model: Any
    tokenizer: Any
    image_processor: Any
    source: str
    backend: str = "hf"
    extras: dict = field(default_factory=dict)
    reading: ReadingSettings | None = None  # the settings it was trained to read with (saved in its model card)
    adapter: str | None = None  # the LoRA adapter of ``model`` it reads with: several bundles may share one model
    # Decode with a static KV cache (compiled into CUDA graphs on a GPU) in shapes that repeat; see enable_fast_decode.
    fast_decode: bool = False

    def __post_init__(self) -> None:
        if self.adapter is not None:
            # Once no bundle reads with an adapter, the next read or attach on the model deletes it.
            _adapter_readers(self.model)[self.adapter] += 1
            weakref.finalize(self, _reader_gone, self.model, self.adapter)

    @contextmanager
    def active(self) -> Iterator[None]:
        """``model`` set to this bundle's adapter, and held against other bundles sharing the model meanwhile."""
        if self.adapter is None:
            yield
            return
        with model_lock(self.model):
            drop_unread_adapters(self.model)
            if self.model.active_adapter != self.adapter:
                self.model.set_adapter(self.adapter)
            yield

    @property
    def device(self) -> torch.device:
        """Where inputs go: the token embeddings' device (the vision tower may be parked on the CPU)."""
        try:
            return self.model.get_input_embeddings().weight.device
        except (AttributeError, NotImplementedError):  # remote code without the accessor
            return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype pixels must have: the first floating-point parameter's (quantized weights are not)."""
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    def encode(self, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        return self.family.encode(self, image, prompt, target, resolution)

    def enable_fast_decode(self) -> None:
        """From now on read with a static KV cache, each batch padded to a power of two pages and each prompt to a
        multiple of ``FAST_DECODE_LENGTH_STEP`` tokens, so that the compiled decode steps of earlier batches are reused;
        MoE experts read each expert's weights once a step (``models.experts``). The same text as the dynamic cache;
        on a GPU, ``bench ocr`` measured twice the pages/s at batch 64 (docs/benchmarks.md). hf backend only."""
        if self.backend != "hf":
            raise ModelError(f"fast decoding needs the hf backend, and this model was loaded with {self.backend}: "
                             "set training.backend: hf in the workspace's ocrloop.yaml")
        from ocrloop.models.experts import use_experts

        use_experts(self.model, "padded")
        self.fast_decode = True

    def read(self, images: list[Image.Image], reading: ReadingSettings) -> list[str]:
        """Greedy OCR of ``images`` at ``reading``'s resolution, prompt and generation limit.

        Inside ``FeatureCache.reading(keys)`` the image features come from the cache, not the vision tower."""
        return self.read_prepared([self.prepare(image, reading) for image in images], reading)

    def prepare(self, image: Image.Image, reading: ReadingSettings) -> EncodedExample:
        """The CPU half of reading ``image`` (resizing, normalizing, the prompt's ids): safe to run in other threads
        while this model generates, so that it can wait on the GPU instead of the GPU waiting on it."""
        return self.encode(image, reading.prompt, None, reading.resolution)

    def read_prepared(self, pages: list[EncodedExample], reading: ReadingSettings) -> list[str]:
        """``read`` of pages already ``prepare``d with the same ``reading``."""
        return self.generate_encoded(pages, max_new_tokens=reading.max_new_tokens)

    def generate(self, images: list[Image.Image], prompt: str = "markdown", resolution: str = "base",
                 max_new_tokens: int = 512, min_new_tokens: int = 0, cache_implementation: str | None = None) -> list[str]:
        """Greedy OCR of ``images``: one cleaned text per image.

        ``min_new_tokens`` forces output lengths (benchmarks of random weights); ``cache_implementation="static"``
        compiles the decode."""
        return self.generate_encoded([self.encode(image, prompt, None, resolution) for image in images],
                                     max_new_tokens, min_new_tokens, cache_implementation)

    @torch.no_grad()
    def generate_encoded(self, encoded: list[EncodedExample], max_new_tokens: int = 512, min_new_tokens: int = 0,
                         cache_implementation: str | None = None) -> list[str]:
        """``generate`` of pages already encoded (without targets)."""
        pages = len(encoded)
        length_step = 1
        if self.fast_decode and cache_implementation is None:
            cache_implementation, length_step = "static", FAST_DECODE_LENGTH_STEP
            encoded = encoded + [encoded[-1]] * ((1 << (pages - 1).bit_length()) - pages)  # read, then dropped
        batch = collate(encoded, self.tokenizer.pad_token_id, padding_side="left", family=self.family,
                        tokenizer=self.tokenizer, dtype=self.dtype, pad_to_multiple=length_step)
        batch.pop("labels")
        batch = to_device(batch, self.device)
        was_training = self.model.training
        self._inference_mode(True)
        try:
            # A static cache keeps one key length, planned once; its speeds were measured with PyTorch's own choice.
            kernels = nullcontext() if cache_implementation == "static" else sdpa_kernel(WITHOUT_CUDNN)
            with self.active(), self.family.bounded_vision_memory(self.model), kernels:
                output = self.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens or None,
                    cache_implementation=cache_implementation,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.family.stop_token_ids(self.tokenizer),
                )
        finally:
            if was_training:
                self._inference_mode(False)
        new_tokens = output[:pages, batch["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [self.family.clean_output(text) for text in texts]

    def _inference_mode(self, on: bool) -> None:
        # Unsloth swaps kernels between training and generation; plain models only switch mode.
        if self.backend == "unsloth":
            from unsloth import FastVisionModel

            (FastVisionModel.for_inference if on else FastVisionModel.for_training)(self.model)
        else:
            self.model.train(not on)


def wrap_image_features(owner: Any, wrap: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Replace ``owner.get_image_features`` by ``wrap(current)`` on this instance; return what puts the previous one
    back. The one way ocrloop changes how image features are computed (no autograd, answers from a cache)."""
    before = owner.__dict__.get("get_image_features")
    owner.get_image_features = wrap(owner.get_image_features)

    def restore() -> None:
        if before is None:
            del owner.get_image_features
        else:
            owner.get_image_features = before

    return restore


def collate(examples: list[EncodedExample], pad_token_id: int, padding_side: str = "right",
            family: "OCRFamily | None" = None, tokenizer: Any = None, dtype: torch.dtype | None = None,
            pad_to_multiple: int = 1) -> dict[str, Any]:
    """Pad ids/labels/attention to the longest example (rounded up to ``pad_to_multiple``) and batch the vision inputs.

    Vision tensors are concatenated along the first dimension unless ``family`` batches them
    its own way; pixel tensors are cast to ``dtype`` when given.
    """
    longest = -(-max(len(e) for e in examples) // pad_to_multiple) * pad_to_multiple
    ids, labels, mask = [], [], []
    for example in examples:
        padding = longest - len(example)
        if padding_side == "left":
            ids.append([pad_token_id] * padding + example.input_ids)
            labels.append([IGNORE_INDEX] * padding + example.labels)
            mask.append([0] * padding + [1] * len(example))
        else:
            ids.append(example.input_ids + [pad_token_id] * padding)
            labels.append(example.labels + [IGNORE_INDEX] * padding)
            mask.append([1] * len(example) + [0] * padding)
    batch: dict[str, Any] = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    if family is not None and type(family).collate_vision is not OCRFamily.collate_vision:
        family.collate_vision([e.vision for e in examples], batch, tokenizer, dtype)
    else:
        if all(e.feature_key for e in examples):
            batch["feature_keys"] = [e.feature_key for e in examples]
        # Keys may differ between pages (a small page has no local tiles); each present tensor is concatenated.
        for key in dict.fromkeys(key for e in examples for key in e.vision):
            batch[key] = torch.cat([e.vision[key] for e in examples if key in e.vision], dim=0)
        if family is not None and dtype is not None:
            for key in family.pixel_keys:
                if key in batch and batch[key].is_floating_point():
                    batch[key] = batch[key].to(dtype)
    if family is not None:
        family.finish_batch(batch, tokenizer)
    return batch


class OCRFamily:
    """Base class of the model families. Subclasses set the class attributes and the hooks."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.json "model_type" values this family loads
    image_token: ClassVar[str] = "<image>"  # the placeholder token its prompts expand per image feature
    random_sizes: ClassVar[tuple[str, ...]] = ("tiny", "full")  # the presets build_random writes
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    # Batch keys that get_image_features takes (pixels and their layout); empty: no such method.
    feature_input_keys: ClassVar[tuple[str, ...]] = ()
    resolutions: ClassVar[tuple[str, ...]] = tuple(RESOLUTIONS)
    unsloth_supported: ClassVar[bool] = True  # False: Unsloth cannot patch it; ``auto`` picks the hf backend
    # Module-name patterns (regex alternatives over the full module path) per LoRA target group.
    lora_patterns: ClassVar[dict[str, str | None]] = {}  # None: the group has no modules in this family
    # Substrings of parameter names that belong to the vision tower and projector.
    vision_parameter_markers: ClassVar[tuple[str, ...]] = ()

    # --- loading ------------------------------------------------------------------------------

    def accepts(self, config: dict[str, Any]) -> bool:
        """Whether a checkpoint with this ``config.json`` belongs to the family."""
        return config.get("model_type") in self.model_types

    def model_class(self) -> Any:
        raise NotImplementedError

    def load_processors(self, path: str) -> tuple[Any, Any]:
        """``(tokenizer, image_processor)`` saved with the checkpoint at ``path``."""
        raise NotImplementedError

    def prepare_loaded(self, bundle: OCRModel) -> None:
        """Adjust a freshly loaded model to the inputs ``encode`` makes (hooks, kernels); nothing by default."""

    def save_processors(self, bundle: OCRModel, path: Path) -> None:
        bundle.tokenizer.save_pretrained(path)
        bundle.image_processor.save_pretrained(path)

    # --- examples ------------------------------------------------------------------------------

    def format_prompt(self, template: str, image_placeholder: str, **values: str) -> str:
        if template not in PROMPT_TEMPLATES:
            raise ModelError(f"unknown prompt template {template!r}; choose from {', '.join(PROMPT_TEMPLATES)}")
        instruction = PROMPT_TEMPLATES[template].format(ref=values.get("ref", ""))
        return f"{image_placeholder}\n{instruction}"

    def encode(self, bundle: OCRModel, image: Image.Image, prompt: str, target: str | None, resolution: str) -> EncodedExample:
        raise NotImplementedError

    def image_tokens_for(self, bundle: OCRModel, width: int, height: int, resolution: str) -> int | None:
        """How many image tokens a ``width`` x ``height`` page becomes, without its pixels; None where the family
        can only tell by encoding the page."""
        return None

    def prompt_ids_for(self, bundle: OCRModel, prompt: str, image_tokens: int) -> list[int] | None:
        """The prompt's ids (image placeholders included) for a page of ``image_tokens``; None where unknown."""
        return None

    def max_image_tokens(self, bundle: OCRModel, resolution: str) -> int | None:
        """The most image tokens a page of any size becomes at ``resolution``; None where it does not depend on the
        page's size or cannot be told."""
        return None

    def longest_prompt(self, bundle: OCRModel, prompt: str, resolution: str) -> int | None:
        """The most tokens a page's prompt takes at ``resolution`` (image placeholders included, padded as the fast
        decoders pad); None where ``max_image_tokens`` is."""
        tokens = self.max_image_tokens(bundle, resolution)
        ids = None if tokens is None else self.prompt_ids_for(bundle, prompt, tokens)
        return None if ids is None else -(-len(ids) // FAST_DECODE_LENGTH_STEP) * FAST_DECODE_LENGTH_STEP

    def encoded_lengths(self, bundle: OCRModel, sizes: list[tuple[int, int]], prompt: str, targets: list[str],
                        resolution: str) -> list[tuple[int, int]] | None:
        """``(tokens, image tokens)`` of each training example ``encode`` would make of a ``width`` x ``height`` page
        of ``sizes`` and its target, computed from the sizes alone (no decoding, no resizing); None where the family
        cannot. The targets are tokenized in one call: 180,000 lines one by one took 10 s of a run's page check."""
        sizes = [(int(width), int(height)) for width, height in sizes]
        prompt_lengths: dict[tuple[int, int], tuple[int, int]] = {}  # (prompt tokens, image tokens) per page size
        for size in dict.fromkeys(sizes):
            image_tokens = self.image_tokens_for(bundle, *size, resolution)
            prompt_ids = None if image_tokens is None else self.prompt_ids_for(bundle, prompt, image_tokens)
            if prompt_ids is None:
                return None
            prompt_lengths[size] = len(prompt_ids), image_tokens
        answers = bundle.tokenizer(targets, add_special_tokens=False)["input_ids"] if targets else []
        return [(prompt_lengths[size][0] + len(answer) + 1, prompt_lengths[size][1]) for size, answer in zip(sizes, answers)]

    def check_resolution(self, resolution: str) -> None:
        if resolution not in self.resolutions:
            raise ModelError(
                f"resolution {resolution!r} is not available for {self.name}; use one of {', '.join(self.resolutions)}"
            )

    def _join(self, bundle: OCRModel, prompt_ids: list[int], target: str | None, vision: dict, image_tokens: int) -> EncodedExample:
        """Prompt ids (image tokens included) + answer ids + end-of-answer; only the answer is learned."""
        if target is None:
            return EncodedExample(prompt_ids, [IGNORE_INDEX] * len(prompt_ids), vision, image_tokens)
        answer = bundle.tokenizer(target, add_special_tokens=False)["input_ids"] + [self.stop_token_ids(bundle.tokenizer)[0]]
        return EncodedExample(prompt_ids + answer, [IGNORE_INDEX] * len(prompt_ids) + answer, vision, image_tokens)

    def prefill_positions(self, bundle: "OCRModel", batch: dict[str, Any]) -> tuple[torch.Tensor, list[int]]:
        """The position ids of a left-padded batch of prompts (CPU tensors) as ``generate`` numbers them, and for
        each page what its decode positions add to its token count (non-zero where image tokens shift later text)."""
        mask = batch["attention_mask"]
        return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0), [0] * mask.shape[0]

    def decode_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """The position ids of one decode step from each page's position (``[pages, 1]``)."""
        return positions

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        return [tokenizer.eos_token_id]

    def clean_output(self, text: str) -> str:
        """Strip what the model adds around the document text (grounding boxes, end markers)."""
        return text.strip()

    # --- training -----------------------------------------------------------------------------

    def collate_vision(self, visions: list[dict[str, torch.Tensor]], batch: dict[str, Any], tokenizer: Any,
                       dtype: torch.dtype | None) -> None:
        """Put the vision inputs of a padded batch into ``batch``; override when concatenation is not it."""
        raise NotImplementedError

    def finish_batch(self, batch: dict[str, Any], tokenizer: Any) -> None:
        """Add the inputs the model's forward derives from a padded batch (token types, for one); nothing by default."""

    def add_training_layout(self, bundle: "OCRModel", batch: dict[str, Any]) -> None:
        """Add to a training batch, on the CPU (in the data loader's workers), the index tensors the model would
        otherwise build on its device step by step (one small kernel and host sync after another); the same values
        either way. Nothing by default."""

    def lora_target_regex(self, groups: list[str]) -> str | list[str]:
        """A regex over module names selecting the linear layers of the chosen target groups
        (an empty list when the groups only name parameters, such as fused MoE experts)."""
        unknown = [g for g in groups if g not in self.lora_patterns]
        if unknown:
            raise ModelError(f"{self.name} has no LoRA target group(s) {unknown}; choose from {', '.join(self.lora_patterns)}")
        patterns = [self.lora_patterns[g] for g in groups if self.lora_patterns[g] is not None]
        return "|".join(f"(?:{p})" for p in patterns) if patterns else []

    def lora_target_parameters(self, groups: list[str]) -> list[str]:
        """Parameter names (not modules) that get LoRA, e.g. fused MoE expert weights; none by default."""
        return []

    def bounded_vision_memory(self, model: Any, budget_bytes: int = VISION_ATTENTION_BYTES) -> AbstractContextManager:
        """While inside, the vision tower's attention runs few enough views at a time that its
        temporaries stay under ``budget_bytes``; the features are the same (float tolerance).
        Nothing to bound by default."""
        return nullcontext()

    # --- random-weight checkpoints ------------------------------------------------------------------

    def random_config(self, size: str, tokenizer: Any) -> Any:
        """The architecture config for ``size``: ``tiny`` (a few MB, for CPUs) or ``full`` (the published one)."""
        raise NotImplementedError

    def special_tokens(self) -> dict[str, str]:
        """Tokens the family's prompts need, as tokenizer attributes (``image_token`` first)."""
        raise NotImplementedError

    def save_random_processors(self, tokenizer: Any, path: Path) -> None:
        raise NotImplementedError

    def build_random(self, path: Path, size: str = "tiny", seed: int = 0) -> Path:
        """Write a randomly initialized checkpoint of ``size`` with a project-built tokenizer to ``path``.

        Random weights measure speed and memory honestly and say nothing about accuracy. ``full``
        is built on the GPU in bf16 when one is present; every other size always in fp32 on the CPU.
        """
        from ocrloop.models.tokenizer import build_tiny_tokenizer

        if size not in self.random_sizes:
            raise ModelError(f"{self.name} has no {size!r} preset; use {', '.join(self.random_sizes)}")
        tokenizer = build_tiny_tokenizer(self.special_tokens(), seed=seed)
        config = self.random_config(size, tokenizer)
        torch.manual_seed(seed)
        on_gpu = size == "full" and torch.cuda.is_available()
        with torch.device("cuda" if on_gpu else "cpu"):
            model = self.model_class()(config)
        if size == "full":
            model.to(torch.bfloat16)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = self.stop_token_ids(tokenizer)[0]
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        self.save_random_processors(tokenizer, path)
        return path


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch (also inside lists of tuples) to ``device``."""

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if isinstance(value, (list, tuple)):
            return type(value)(move(item) for item in value)
        return value

    return {key: move(value) for key, value in batch.items()}


def ceil_div(value: int, divisor: int) -> int:
    return math.ceil(value / divisor)
