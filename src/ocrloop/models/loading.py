"""Loading checkpoints and saved adapters on either backend, attaching LoRA, saving results.

Backends: ``unsloth`` (``FastVisionModel``; CUDA only) and ``hf`` (plain transformers + peft,
anywhere). Both attach LoRA to the same modules, chosen by the family's target regex, so a
run means the same thing on either.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ocrloop.atomic import atomic_write_json
from ocrloop.distributed import local_rank, world_size
from ocrloop.models.base import ModelError, OCRFamily, OCRModel, drop_unread_adapters, model_lock, wrap_image_features

QUANTIZED_MODES = ("qlora4", "lora8")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def unsloth_available() -> bool:
    return cuda_available() and importlib.util.find_spec("unsloth") is not None


def prepare_backend(backend: str, compile: bool = False) -> None:
    """Import Unsloth before anything imports transformers when it will be the backend.

    Unsloth patches transformers at import time; imported later it warns and leaves
    optimizations out. Call this first in any process that loads a model. Unless ``compile``,
    Unsloth keeps its rewritten layers and fused loss but runs them eagerly (it reads
    ``UNSLOTH_COMPILE_DISABLE`` at import): no compilation in the first steps, which a run of a
    few hundred steps never earns back (``training.compile``).
    """
    if backend in ("auto", "unsloth") and unsloth_available():
        if not compile:
            os.environ["UNSLOTH_COMPILE_DISABLE"] = "1"
        import unsloth  # noqa: F401

    from transformers.utils import logging as transformers_logging

    # Weight-loading bars from transformers clutter ocrloop's own progress output.
    transformers_logging.disable_progress_bar()


def pick_backend(backend: str, family: OCRFamily | None = None) -> str:
    """Resolve ``auto`` and check that the requested backend can run here (and for ``family``). Launched as several
    processes (torchrun), ``auto`` is ``hf``: that is the path whose distributed training is tested here."""
    if backend not in ("auto", "unsloth", "hf"):
        raise ModelError(f"unknown backend {backend!r}; use auto, unsloth or hf")
    if family is not None and not family.unsloth_supported:
        if backend == "unsloth":
            raise ModelError(f"Unsloth cannot patch {family.name}; use --backend hf (or auto)")
        return "hf"
    if backend == "auto":
        return "unsloth" if unsloth_available() and world_size() == 1 else "hf"
    if backend == "unsloth" and not unsloth_available():
        raise ModelError("backend unsloth needs a CUDA GPU and the unsloth package; use --backend hf")
    return backend


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    if cuda_available() and world_size() > 1:
        # Each launched process has its own GPU. "cuda" alone is the first one: every process's model, feature pass
        # and cached features landed there until the Trainer moved the model (seen on two H200s: GPU 1 idle during
        # the page pass, GPU 0 computing both halves).
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    return torch.device("cuda" if cuda_available() else "cpu")


def load_checkpoint(family: OCRFamily, path: Path, source: str, *, backend: str = "auto", mode: str = "lora16",
                    device: str | None = None, float32_weights: bool = False) -> OCRModel:
    """Load a base checkpoint of ``family`` from ``path`` in the precision ``mode`` asks for (``float32_weights``:
    float32 whatever the device; not with quantized modes)."""
    backend = pick_backend(backend, family)
    target = _device(device)
    if mode in QUANTIZED_MODES and target.type != "cuda":
        raise ModelError(f"mode {mode} needs a CUDA GPU (bitsandbytes); on this machine use --mode lora16 or full")
    if mode in QUANTIZED_MODES and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"mode {mode} needs the bitsandbytes package; pip install bitsandbytes")
    try:
        tokenizer, image_processor = family.load_processors(str(path))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot load the tokenizer or image processor ({error})") from None
    if float32_weights and mode in QUANTIZED_MODES:
        raise ModelError(f"float32 weights and mode {mode} exclude each other: a quantized model keeps no float32 weights")
    dtype = torch.float32 if float32_weights else compute_dtype(target)
    try:
        if backend == "unsloth":
            from unsloth import FastVisionModel

            model, _ = FastVisionModel.from_pretrained(
                str(path),
                load_in_4bit=mode == "qlora4",
                load_in_8bit=mode == "lora8",
                full_finetuning=mode == "full",
                dtype=dtype,
                use_gradient_checkpointing="unsloth",
            )
        else:
            kwargs: dict[str, Any] = {"dtype": dtype}
            if mode in QUANTIZED_MODES:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = (
                    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=dtype)
                    if mode == "qlora4" else BitsAndBytesConfig(load_in_8bit=True)
                )
                kwargs["device_map"] = {"": target.index or 0}
            model = family.model_class().from_pretrained(str(path), **kwargs)
            if mode not in QUANTIZED_MODES:
                model.to(target)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"{path}: cannot load the model ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    bundle = OCRModel(family, model, tokenizer, image_processor, source=str(source), backend=backend,
                      extras={"mode": mode, "path": str(path)})
    family.prepare_loaded(bundle)
    return bundle


def attach_lora(bundle: OCRModel, *, rank: int, alpha: int, dropout: float, groups: list[str], seed: int,
                gradient_checkpointing: bool = True, grouped_experts: bool = True) -> None:
    """Wrap ``bundle.model`` with LoRA adapters on the family's modules for ``groups``; on the hf backend, with
    ``grouped_experts``, LoRA on fused MoE experts runs beside their grouped GEMMs (``models.expert_lora``)."""
    target_modules = bundle.family.lora_target_regex(groups)
    target_parameters = bundle.family.lora_target_parameters(groups)
    if bundle.backend == "unsloth":
        from unsloth import FastVisionModel

        try:
            bundle.model = FastVisionModel.get_peft_model(
                bundle.model,
                r=rank,
                lora_alpha=alpha,
                lora_dropout=dropout,
                bias="none",
                target_modules=target_modules,
                random_state=seed,
                use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
            )
        except ValueError as error:
            # Unsloth also puts LoRA on fused MoE experts for "mlp"; peft's wrapper for those refuses dropout.
            hint = "; use --lora-dropout 0" if "dropout" in str(error) else ""
            raise ModelError(f"cannot attach LoRA to {groups} of {bundle.family.name}: {str(error).splitlines()[0]}{hint}") from None
        return
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = bundle.extras.get("mode") in QUANTIZED_MODES
    if quantized:
        bundle.model = prepare_model_for_kbit_training(bundle.model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        checkpoint_activations(bundle.model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=target_modules,
                        target_parameters=target_parameters or None)
    try:
        bundle.model = get_peft_model(bundle.model, config)
    except ValueError as error:
        raise ModelError(f"cannot attach LoRA to {groups} of {bundle.family.name}: {str(error).splitlines()[0]}") from None
    if gradient_checkpointing and not quantized:
        bundle.model.get_base_model().disable_input_require_grads()  # peft hooks the embeddings again
    if target_parameters and grouped_experts:
        from ocrloop.models.expert_lora import group_expert_lora

        group_expert_lora(bundle.model)


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Turn on non-reentrant gradient checkpointing for ``model``, without the input-embedding hooks transformers
    adds with it.

    Those hooks make every embedding output require grad. Reentrant checkpointing needs that to reach the weights
    inside a checkpointed layer; non-reentrant checkpointing does not, and gives the same gradients without them.
    Kept, they cost a graph break at every embedding call under torch.compile, and autograd through a frozen vision
    tower."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()


def vision_is_frozen(bundle: OCRModel) -> bool:
    """True when no parameter of the vision tower or projector will be trained."""
    markers = bundle.family.vision_parameter_markers
    return bool(markers) and not any(
        p.requires_grad for name, p in bundle.model.named_parameters() if any(m in name for m in markers)
    )


def skip_frozen_vision_backward(bundle: OCRModel) -> bool:
    """Compute image features without autograd when the vision side is frozen; return whether it applies.

    Unsloth calls ``enable_input_require_grads()`` for gradient checkpointing (the hf backend takes those hooks off:
    ``checkpoint_activations``), which hooks the input embeddings of every nested model, the vision tower's too: its
    outputs then require grad and backward runs through SAM and the vision encoder for nothing. Wrapping each
    ``get_image_features`` in ``torch.no_grad`` gives the same loss and the same LoRA gradients without that graph.
    """
    if not vision_is_frozen(bundle):
        return False
    def no_autograd(original):
        def without_autograd(*args, **kwargs):
            with torch.no_grad():
                return original(*args, **kwargs)

        return without_autograd

    owners = [m for m in bundle.model.modules() if callable(getattr(m, "get_image_features", None))]
    for owner in owners:
        wrap_image_features(owner, no_autograd)
    return bool(owners)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_model(bundle: OCRModel, output: Path, *, base_model: str, merged: bool = False,
               mark_complete: bool = True, card_only: bool = False) -> Path:
    """Save the adapter (or merged / fully trained weights) with the processors and a model card.

    The card (``ocrloop_model.json``) is written last, atomically: a folder without it is not a
    finished model. ``mark_complete=False`` saves without the card; ``card_only`` writes just the card.
    Merging works on a copy, so ``bundle`` keeps its adapter.
    """
    import copy

    from peft import PeftModel

    model = bundle.model
    if isinstance(model, PeftModel) and merged:
        kind = "merged"
    elif isinstance(model, PeftModel):
        kind = "adapter"
    else:
        kind = "full"
    if not card_only:
        output.mkdir(parents=True, exist_ok=True)
        to_save = copy.deepcopy(model).merge_and_unload() if kind == "merged" else model
        to_save.save_pretrained(output)
        bundle.family.save_processors(bundle, output)
    if mark_complete or card_only:
        base = base_model if kind == "adapter" else None
        card = {"kind": kind, "family": bundle.family.name, "base_model": base, "trained_from": base_model}
        if bundle.reading is not None:
            card["reading"] = bundle.reading.to_json()
        atomic_write_json(output / "ocrloop_model.json", card)
    return output


def export_model(source: str, output: Path) -> Path:
    """``source`` (a folder ocrloop saved: adapter, merged or full weights; or a preset or base checkpoint) as one folder
    of plain transformers weights, adapters merged into their base, with the tokenizer and image processor:
    what ``from_pretrained`` and serving engines load. The reading settings stay in ``ocrloop_model.json`` beside
    them. Written to a temporary sibling folder and renamed, so ``output`` is whole or absent."""
    import shutil
    import tempfile

    from peft import PeftModel

    from ocrloop.models import load_model

    output = Path(output)
    if output.exists():
        raise ModelError(f"{output} already exists; choose a new folder for the export")
    bundle = load_model(source, backend="hf", mode="full")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        save_model(bundle, staging, base_model=source, merged=isinstance(bundle.model, PeftModel))
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def load_adapter(path: Path, card: dict, *, backend: str = "auto", device: str | None = None,
                 for_training: bool = False) -> OCRModel:
    """Load a LoRA adapter saved by ocrloop on top of its base model.

    The adapter's tensors are copied by name into a freshly wrapped model rather than through
    ``PeftModel.from_pretrained``: with transformers 5 that path renames keys of some families
    (DeepSeek-OCR-2's ``language_model``) and silently leaves the adapter at its initial zeros.
    Every adapter tensor must land, or loading fails.
    """
    from peft import get_peft_model

    from ocrloop.models import load_model

    weights, config = _adapter_files(path)
    base = load_model(card["base_model"], backend=backend, device=device)
    config.inference_mode = not for_training
    model = get_peft_model(base.model, config)
    load_adapter_weights(model, weights, what=f"its base model {card['base_model']}")
    model.to(base.device)
    if not for_training:
        model.requires_grad_(False)
        model.eval()  # get_peft_model leaves it in train mode: LoRA dropout would act on a plain forward
    tokenizer, image_processor = base.family.load_processors(str(path))
    return OCRModel(base.family, model, tokenizer, image_processor, source=str(path), backend=base.backend,
                    extras={**base.extras, "adapter": str(path), "base_model": card["base_model"]},
                    adapter=None if for_training else "default")


def attach_adapter(shared: OCRModel, path: Path, card: dict, name: str) -> OCRModel:
    """Another saved LoRA adapter, ``name``, on the model of ``shared`` (an adapter bundle of the same base): one
    base model in memory for both, each bundle reading with its own adapter (``OCRModel.active``)."""
    from ocrloop.models.reading import ReadingSettings

    weights, config = _adapter_files(path)
    config.inference_mode = True
    with model_lock(shared.model):  # not while another adapter of this model is reading
        drop_unread_adapters(shared.model)
        shared.model.add_adapter(name, config)
        try:
            load_adapter_weights(shared.model, weights, what=f"its base model {card['base_model']}", adapter=name)
        except ModelError:
            shared.model.delete_adapter(name)
            raise
        shared.model.requires_grad_(False)
        tokenizer, image_processor = shared.family.load_processors(str(path))
        return OCRModel(shared.family, shared.model, tokenizer, image_processor, source=str(path),
                        backend=shared.backend, extras={**shared.extras, "adapter": str(path)},
                        reading=ReadingSettings.from_json(card.get("reading")), adapter=name)


def _adapter_files(path: Path) -> tuple[Path, Any]:
    """A saved adapter's weights file and its peft config; a clear error when either is missing or unreadable."""
    from peft import PeftConfig

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(f"{path}: adapter_model.safetensors is missing")
    try:
        return weights, PeftConfig.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read adapter_config.json ({str(error).splitlines()[0]})") from None


def load_adapter_weights(model: Any, weights: Path, what: str = "this model", adapter: str = "default") -> None:
    """Copy saved LoRA tensors into the live adapter ``adapter`` of ``model`` by name; all must fit."""
    from safetensors.torch import load_file

    expected = {name for name, _ in model.named_parameters() if ".lora_" in name and f".{adapter}." in name}
    saved = {_adapter_key(name, adapter): tensor for name, tensor in load_file(str(weights)).items()}
    missing, unexpected = expected - set(saved), set(saved) - expected
    if missing or unexpected:
        example = sorted(missing or unexpected)[0]
        raise ModelError(f"{weights.parent}: adapter does not fit {what} ({example})")
    model.load_state_dict(saved, strict=False)


def _adapter_key(saved_name: str, adapter: str = "default") -> str:
    # peft saves "x.lora_A.weight"; the live module holds it as "x.lora_A.<adapter>.weight".
    for part in (".lora_A.", ".lora_B.", ".lora_embedding_A.", ".lora_embedding_B."):
        saved_name = saved_name.replace(part, f"{part}{adapter}.")
    return saved_name
