"""Model families behind one interface, and loading a model from a preset, folder or hub id.

One dict maps each family name to its module's class; a checkpoint's family is detected from
its ``config.json`` (``model_type``), never from its name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ocrloop.locking import file_lock
from ocrloop.models.base import PROMPT_TEMPLATES, RESOLUTIONS, ModelError, OCRFamily, OCRModel
from ocrloop.models.deepseek_ocr import DeepseekOcrFamily
from ocrloop.models.deepseek_ocr2 import DeepseekOcr2Family
from ocrloop.models.qwen2_5_vl import Qwen25VLFamily
from ocrloop.models.reading import ReadingSettings

FAMILIES: dict[str, type[OCRFamily]] = {
    "deepseek-ocr": DeepseekOcrFamily,
    "deepseek-ocr-2": DeepseekOcr2Family,
    "qwen2.5-vl": Qwen25VLFamily,
}
TINY_PRESETS = {"tiny-deepseek-ocr": "deepseek-ocr", "tiny-deepseek-ocr-2": "deepseek-ocr-2", "tiny-qwen2.5-vl": "qwen2.5-vl"}
MODEL_CARD = "ocrloop_model.json"  # written beside every model ocrloop saves

__all__ = ["FAMILIES", "TINY_PRESETS", "PROMPT_TEMPLATES", "RESOLUTIONS", "ModelError", "OCRFamily", "OCRModel",
           "detect_family", "resolve_model_path", "load_model"]


def presets_dir() -> Path:
    """Where built presets are kept (``$OCRLOOP_HOME/presets``, default ``~/.cache/ocrloop/presets``)."""
    home = os.environ.get("OCRLOOP_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "ocrloop") / "presets"


def build_preset(name: str, destination: Path | None = None) -> Path:
    """Build the ``tiny`` preset ``name`` (once; later calls reuse it)."""
    family = FAMILIES[TINY_PRESETS[name]]()
    target = destination or presets_dir() / name
    with file_lock(target.parent / f".{name}.lock", timeout=600, what=f"preset {name}"):
        if not (target / "config.json").is_file():
            staging = target.parent / f".{name}.building"
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
            family.build_random(staging, size="tiny")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)  # a preset folder is complete or absent
    return target


def detect_family(config: dict[str, Any], where: str = "model") -> OCRFamily:
    """The family of a checkpoint, from its ``config.json`` contents."""
    for family_class in FAMILIES.values():
        family = family_class()
        if family.accepts(config):
            return family
    model_type = config.get("model_type")
    described = f"model_type={model_type!r}"
    if config.get("architectures"):
        described += f" (architectures {', '.join(map(str, config['architectures']))})"
    known = "; ".join(f"{name} ({', '.join(f.model_types)})" for name, f in FAMILIES.items())
    if config.get("auto_map"):
        raise ModelError(f"{where}: holds its own remote code for {described}, which ocrloop does not know "
                         f"and will not run; the families it knows (model types): {known}")
    raise ModelError(f"{where}: cannot tell the model family from {described}; the families ocrloop knows "
                     f"(model types): {known}")


def resolve_model_path(source: str) -> Path:
    """A local folder for ``source``: a preset name, a folder, or a hub id already in the local cache."""
    if source in TINY_PRESETS:
        return build_preset(source)
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{source}: expected a model folder, got a file")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source))
    except Exception as error:  # the hub client raises many kinds; all mean "not available here"
        raise ModelError(
            f"{source}: no such folder, and it could not be fetched from the hub ({type(error).__name__}); "
            "download it once with `hf download ID --local-dir DIR` and pass DIR"
        ) from None


def read_model_card(path: Path) -> dict[str, Any] | None:
    """The ``ocrloop_model.json`` of a model ocrloop saved; None for other folders."""
    card = path / MODEL_CARD
    if not card.is_file():
        return None
    try:
        values = json.loads(card.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{card}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ModelError(f"{card}: expected an object")
    return values


def check_model(source: str) -> Path:
    """The local folder of ``source`` once it holds what loading needs (config, weights, tokenizer, a family ocrloop
    knows; an adapter ocrloop saved is checked when loaded); raises ``ModelError`` naming what is missing. Nothing is
    loaded: a command checks its model before hours of other work."""
    path = resolve_model_path(source)
    if (read_model_card(path) or {}).get("kind") != "adapter":
        detect_family(_check_files(path), where=str(source))
    return path


def _check_files(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{path}: missing config.json; is this a model folder?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"{config_path}: not valid JSON ({error})") from None
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelError(f"{path}: no weights (*.safetensors or pytorch_model.bin)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ModelError(f"{path}: no tokenizer files (tokenizer.json)")
    return config


def load_model(source: str, *, backend: str = "auto", mode: str = "lora16", device: str | None = None,
               for_training: bool = False, float32_weights: bool = False) -> OCRModel:
    """Load ``source`` (preset, folder, hub id, or a model ocrloop saved) ready to train or to read pages.

    ``backend`` is ``auto`` (Unsloth where CUDA and unsloth are present, else ``hf``), ``unsloth`` or
    ``hf``. ``mode`` picks the precision: ``qlora4``/``lora8`` need CUDA and bitsandbytes. ``float32_weights``
    keeps a base checkpoint's weights in float32 on the GPU too (bf16 then only inside the step, by autocast).
    """
    from ocrloop.models.loading import load_checkpoint

    path = resolve_model_path(source)
    card = read_model_card(path) or {}
    if card.get("kind") == "adapter":
        from ocrloop.models.loading import load_adapter

        bundle = load_adapter(path, card, backend=backend, device=device, for_training=for_training)
    else:
        config = _check_files(path)
        family = detect_family(config, where=str(source))
        if card.get("kind") in ("full", "merged") and not for_training:
            # Weights ocrloop trained in full (or merged) are a whole model: no backend may read them as a LoRA base.
            mode = "full"
        bundle = load_checkpoint(family, path, source, backend=backend, mode=mode, device=device, float32_weights=float32_weights)
    bundle.reading = ReadingSettings.from_json(card.get("reading"))
    return bundle
