"""Under autocast, LoRA layers that leave their input's dtype to autocast give the same loss and gradients with
fewer copies (the training step's ``lora_inputs_left_to_autocast``)."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ocrloop.data.dataset import Dataset
from ocrloop.models import load_model
from ocrloop.models.base import collate, to_device
from ocrloop.models.loading import attach_lora
from ocrloop.train.trainer import lora_inputs_left_to_autocast, lora_layers
from tests.conftest import FAST_RESOLUTION, SMALL_PAGES


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_lora_inputs_left_to_autocast_give_the_same_step_with_fewer_copies(tiny_presets, synthetic_dataset):
    bundle = load_model(str(tiny_presets["tiny-deepseek-ocr-2"]), backend="hf", mode="lora16", for_training=True)
    bundle.model.to(torch.bfloat16)  # as loaded on a GPU; the adapters stay float32
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=["attention", "mlp", "experts"], seed=0,
                gradient_checkpointing=True)
    model = bundle.model
    model.train()
    assert next(p for n, p in model.named_parameters() if "lora_A" in n).dtype == torch.float32
    dataset = Dataset.open(synthetic_dataset, SMALL_PAGES)
    encoded = [bundle.encode(image, "markdown", example.text, FAST_RESOLUTION["tiny-deepseek-ocr-2"])
               for example, image in dataset.iter_images(dataset.examples("train")[:2])]
    batch = to_device(collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer,
                              dtype=torch.bfloat16), bundle.device)
    batch.pop("feature_keys", None)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], collections.Counter]:
        model.zero_grad(set_to_none=True)
        with _CountOps() as ops:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
            loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads, ops.counts

    loss, grads, ops = step()
    with lora_inputs_left_to_autocast(lora_layers(model)):
        left_loss, left_grads, left_ops = step()
    assert all(layer.cast_input_dtype_enabled for layer in model.modules() if hasattr(layer, "cast_input_dtype_enabled"))
    assert torch.equal(left_loss, loss)
    assert left_grads.keys() == grads.keys() and all(torch.equal(left_grads[name], grads[name]) for name in grads)
    adapted = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A"))
    assert left_ops["_to_copy"] <= ops["_to_copy"] - 2 * adapted  # the input's cast and its gradient's, at least


def test_a_mixed_precision_training_step_runs_its_lora_layers_under_autocast_without_the_cast(
        tiny_presets, synthetic_dataset, tmp_path, monkeypatch):
    """bf16 training (as on a GPU; here on the CPU): accelerate's autocast is on in every LoRA layer's forward while
    the cast is off, and the cast is back on for what runs between steps (validation reads without autocast)."""
    import dataclasses

    from ocrloop.config import OcrloopConfig, apply_overrides
    from ocrloop.train import finetune

    seen = []
    original_arguments, original_setup = finetune.FineTuner._training_arguments, finetune.FineTuner.setup

    def bf16_arguments(self):
        return dataclasses.replace(original_arguments(self), bf16=True)

    def setup_and_watch(self):
        original_setup(self)
        for module in self.bundle.model.modules():
            if hasattr(module, "cast_input_dtype_enabled") and hasattr(module, "lora_A"):
                module.register_forward_pre_hook(
                    lambda layer, args: seen.append((torch.is_autocast_enabled("cpu"), layer.cast_input_dtype_enabled)))

    monkeypatch.setattr(finetune.FineTuner, "_training_arguments", bf16_arguments)
    monkeypatch.setattr(finetune.FineTuner, "setup", setup_and_watch)
    config = apply_overrides(
        OcrloopConfig(dataset_dir=synthetic_dataset, registry_path=tmp_path / "registry.db", models_dir=tmp_path / "models",
                      base_model=str(tiny_presets["tiny-deepseek-ocr-2"]), data=SMALL_PAGES),
        {"training.resolution": FAST_RESOLUTION["tiny-deepseek-ocr-2"], "training.batch_size": 2, "training.max_steps": 2,
         "training.eval_steps": 1, "training.eval_max_pages": 1, "training.max_new_tokens": 4, "training.lora_dropout": 0.0,
         "training.lora_targets": ["attention", "mlp"], "training.save_steps": 1000, "training.feature_cache": False})
    finetune.train(config, tmp_path / "out")
    in_steps = [flag for autocast, flag in seen if autocast]
    between = [flag for autocast, flag in seen if not autocast]
    assert in_steps and not any(in_steps)
    assert between and all(between)
