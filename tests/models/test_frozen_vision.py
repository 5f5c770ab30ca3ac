"""Gradient checkpointing without input-embedding hooks, and no autograd through a frozen vision tower: same loss,
same LoRA gradients, no vision graph."""

import pytest
import torch
from PIL import Image

from ocrloop.models import load_model
from ocrloop.models.base import collate
from ocrloop.models.loading import attach_lora, checkpoint_activations, skip_frozen_vision_backward
from tests.conftest import FAST_RESOLUTION

VISION_MODULE = {"tiny-deepseek-ocr": "sam_model", "tiny-deepseek-ocr-2": "vision_tower", "tiny-qwen2.5-vl": "visual"}
PAGES = [Image.new("RGB", (340, 440), "white"), Image.effect_noise((300, 380), 40).convert("RGB")]  # made once: noise is random


def _lora_model(preset, groups, input_grad_hooks=False):
    bundle = load_model(preset)
    torch.manual_seed(0)
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=groups, seed=0, gradient_checkpointing=True)
    if input_grad_hooks:  # as Unsloth's gradient checkpointing leaves them, and this backend did before
        bundle.model.get_base_model().enable_input_require_grads()
    bundle.model.train()
    return bundle


def _input_grad_hooks(model):
    """The hooks of ``enable_input_require_grads`` (each makes a module's output require grad), anywhere in ``model``."""
    return [hook for module in model.modules() for hook in module._forward_hooks.values()
            if getattr(hook, "__name__", "").startswith("make_inputs_require_grad")]


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
    # With the input-embedding hooks, which make the frozen tower's outputs require grad: the waste this removes.
    plain = _lora_model(preset, ["attention", "mlp"], input_grad_hooks=True)
    fast = _lora_model(preset, ["attention", "mlp"], input_grad_hooks=True)
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


@pytest.mark.parametrize("preset", list(FAST_RESOLUTION))
@pytest.mark.parametrize("groups", [["attention", "mlp"], ["vision"]])
def test_checkpointing_without_input_grad_hooks_gives_the_same_gradients(tiny_presets, preset, groups):
    """transformers' ``gradient_checkpointing_enable`` and peft each hook the embeddings so that their outputs require
    grad (each call forgetting the hooks before it). Non-reentrant checkpointing reaches the LoRA weights inside a
    checkpointed layer without them, and under torch.compile each one is a graph break at ``requires_grad_``."""
    bare = _lora_model(preset, groups)
    assert not _input_grad_hooks(bare.model)
    hooked = _lora_model(preset, groups, input_grad_hooks=True)
    assert _input_grad_hooks(hooked.model), "the comparison needs the hooks on one side"
    bare_loss, bare_grads, _ = _step(bare, preset)
    hooked_loss, hooked_grads, _ = _step(hooked, preset)
    assert bare_loss == pytest.approx(hooked_loss, abs=1e-6)
    assert bare_grads.keys() == hooked_grads.keys() and bare_grads
    assert any(grad.abs().sum() > 0 for grad in bare_grads.values())
    for name in bare_grads:
        assert torch.allclose(bare_grads[name], hooked_grads[name], atol=1e-6), name


def test_full_fine_tuning_checkpoints_without_input_grad_hooks(tiny_presets):
    bundle = load_model("tiny-qwen2.5-vl")
    checkpoint_activations(bundle.model)
    assert bundle.model.is_gradient_checkpointing and not _input_grad_hooks(bundle.model)
