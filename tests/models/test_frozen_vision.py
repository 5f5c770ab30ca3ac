"""No autograd through a frozen vision tower: same loss, same LoRA gradients, no vision graph."""

import pytest
import torch
from PIL import Image

from ocrloop.models import load_model
from ocrloop.models.base import collate
from ocrloop.models.loading import attach_lora, skip_frozen_vision_backward
from tests.conftest import FAST_RESOLUTION

VISION_MODULE = {"tiny-deepseek-ocr": "sam_model", "tiny-deepseek-ocr-2": "vision_tower", "tiny-qwen2.5-vl": "visual"}
PAGES = [Image.new("RGB", (340, 440), "white"), Image.effect_noise((300, 380), 40).convert("RGB")]  # made once: noise is random


def _lora_model(preset, groups):
    bundle = load_model(preset)
    torch.manual_seed(0)
    # Gradient checkpointing on: this is what installs the input-embedding hooks that cause the waste.
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=groups, seed=0, gradient_checkpointing=True)
    bundle.model.train()
    return bundle


def _step(bundle, preset):
    encoded = [bundle.encode(page, "markdown", text, FAST_RESOLUTION[preset]) for page, text in zip(PAGES, ["# Total: $5", "Receipt"])]
    batch = collate(encoded, bundle.tokenizer.pad_token_id, family=bundle.family, tokenizer=bundle.tokenizer)
    seen = {}
    vision = next(m for name, m in bundle.model.named_modules() if name.endswith(VISION_MODULE[preset]))
    def record(module, args, output):  # returns None: a hook that returns something replaces the output
        seen.setdefault("requires_grad", _requires_grad(output))

    handle = vision.register_forward_hook(record)
    loss = bundle.model(**batch).loss
    loss.backward()
    handle.remove()
    grads = {n: p.grad.detach().clone() for n, p in bundle.model.named_parameters() if p.requires_grad}
    return loss.item(), grads, seen["requires_grad"]


def _requires_grad(output):
    if isinstance(output, torch.Tensor):
        return output.requires_grad
    tensor = getattr(output, "last_hidden_state", None)
    return (tensor if tensor is not None else output[0]).requires_grad


@pytest.mark.parametrize("preset", list(FAST_RESOLUTION))
def test_same_loss_and_gradients_without_a_vision_graph(tiny_presets, preset):
    plain = _lora_model(preset, ["attention", "mlp"])
    fast = _lora_model(preset, ["attention", "mlp"])
    assert skip_frozen_vision_backward(fast)
    plain_loss, plain_grads, plain_graph = _step(plain, preset)
    fast_loss, fast_grads, fast_graph = _step(fast, preset)
    assert plain_graph, "without the fix the frozen tower records a graph (the waste this removes)"
    assert not fast_graph
    assert fast_loss == pytest.approx(plain_loss, abs=1e-6)
    assert plain_grads.keys() == fast_grads.keys()
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], fast_grads[name], atol=1e-6), name


@pytest.mark.parametrize("preset", list(FAST_RESOLUTION))
def test_vision_lora_keeps_its_gradients(tiny_presets, preset):
    bundle = _lora_model(preset, ["vision"])
    assert not skip_frozen_vision_backward(bundle)
    _, grads, graph = _step(bundle, preset)
    assert graph and any(VISION_MODULE[preset] in name and grad.abs().sum() > 0 for name, grad in grads.items())
