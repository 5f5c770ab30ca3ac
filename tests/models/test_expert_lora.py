"""LoRA on fused MoE experts beside the grouped GEMMs computes what peft's parametrized weights compute, forward and
backward, keeps peft's adapter, and compiles as one graph."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.lora.layer import ParamWrapper

from ocrloop.models import load_model
from ocrloop.models.expert_lora import GroupedExpertLoRA, group_expert_lora
from ocrloop.models.loading import attach_lora

MOE_PRESETS = ["tiny-deepseek-ocr", "tiny-deepseek-ocr-2"]


class _Holder(torch.nn.Module):
    def __init__(self, experts: torch.nn.Module):
        super().__init__()
        self.experts = experts


def _random_lora(model: torch.nn.Module) -> None:
    """peft starts lora_B at zero, which would make any LoRA path look right."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _routed_tokens(experts: torch.nn.Module, tokens: int = 17, per_token: int = 2):
    generator = torch.Generator().manual_seed(0)
    dtype = experts.down_proj.dtype
    hidden = torch.randn(tokens, experts.hidden_dim, generator=generator).to(dtype).requires_grad_()
    index = torch.stack([torch.randperm(experts.num_experts, generator=generator)[:per_token] for _ in range(tokens)])
    return hidden, index, torch.rand(tokens, per_token, generator=generator).to(dtype)


def _experts_with_lora(preset: str, transposed: bool, dtype: torch.dtype = torch.float32) -> _Holder:
    """One experts module of ``preset`` in ``dtype`` with random rank-4 LoRA on both fused weights, stored
    (experts, in, out) when ``transposed`` (as some MoE models do) and (experts, out, in) as DeepSeek's are otherwise."""
    experts = next(m for m in load_model(preset, backend="hf").model.modules() if type(m).__name__.endswith("TextExperts"))
    if transposed:
        for name in ("gate_up_proj", "down_proj"):
            setattr(experts, name, torch.nn.Parameter(getattr(experts, name).transpose(1, 2).contiguous()))
        experts.is_transposed = True
    experts.to(dtype).requires_grad_(False)
    holder = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=[],
                                                target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
                                     _Holder(experts))
    _random_lora(holder)
    return holder


def _forward_backward(holder: _Holder, hidden, index, weights):
    holder.zero_grad(set_to_none=True)
    hidden.grad = None
    output = holder.experts(hidden, index, weights)
    output.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in holder.named_parameters() if p.requires_grad}
    return output.detach(), hidden.grad.clone(), grads


@pytest.mark.parametrize("transposed", [False, True], ids=["(experts, out, in)", "(experts, in, out)"])
@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_grouped_expert_lora_computes_what_peft_computes(tiny_presets, preset, transposed):
    holder = _experts_with_lora(preset, transposed)
    inputs = _routed_tokens(holder.experts.base_layer.base_layer)
    peft_output, peft_input_grad, peft_grads = _forward_backward(holder, *inputs)
    assert group_expert_lora(holder) == 1 and isinstance(holder.experts, GroupedExpertLoRA)
    output, input_grad, grads = _forward_backward(holder, *inputs)
    torch.testing.assert_close(output, peft_output)
    torch.testing.assert_close(input_grad, peft_input_grad)
    assert grads.keys() == peft_grads.keys() and len(grads) == 4  # lora_A and lora_B of both weights
    for name in grads:
        torch.testing.assert_close(grads[name], peft_grads[name])


def test_a_bf16_rank_4_lora_is_padded_for_grouped_mm_and_compiles(tiny_presets):
    """A rank-4 bf16 factor's rows are 8 bytes, which grouped_mm refuses: zero columns make them 16. Compiled, the
    factors must reach grouped_mm row-major, which inductor does not keep for a plain copy (models.expert_lora)."""
    holder = _experts_with_lora("tiny-deepseek-ocr-2", transposed=False, dtype=torch.bfloat16)
    inputs = _routed_tokens(holder.experts.base_layer.base_layer)
    peft_output, _, peft_grads = _forward_backward(holder, *inputs)
    group_expert_lora(holder)
    eager_output, _, eager_grads = _forward_backward(holder, *inputs)
    torch.testing.assert_close(eager_output, peft_output, rtol=0.02, atol=0.02)
    torch._dynamo.reset()
    holder.experts.compile()
    compiled_output, _, compiled_grads = _forward_backward(holder, *inputs)
    torch.testing.assert_close(compiled_output, eager_output, rtol=0.02, atol=0.02)
    for name in peft_grads:
        torch.testing.assert_close(eager_grads[name], peft_grads[name], rtol=0.05, atol=0.02)
        torch.testing.assert_close(compiled_grads[name], eager_grads[name], rtol=0.05, atol=0.02)


def test_disabled_or_merged_adapters_take_peft_s_path(tiny_presets):
    holder = _experts_with_lora("tiny-deepseek-ocr-2", transposed=False)
    hidden, index, weights = _routed_tokens(holder.experts.base_layer.base_layer)
    group_expert_lora(holder)
    with torch.no_grad():
        adapted = holder.experts(hidden, index, weights)
        for wrapper in (m for m in holder.modules() if isinstance(m, ParamWrapper)):
            wrapper.enable_adapters(False)
        plain = holder.experts(hidden, index, weights)
        assert not torch.allclose(plain, adapted)
        torch.testing.assert_close(plain, holder.experts.base_layer.base_layer(hidden, index, weights))
        for wrapper in (m for m in holder.modules() if isinstance(m, ParamWrapper)):
            wrapper.enable_adapters(True)
        holder.experts.merge()  # down_proj's delta into its weight; gate_up_proj's LoRA then runs through peft
        torch.testing.assert_close(holder.experts(hidden, index, weights), adapted)


def test_grouped_expert_lora_compiles_as_one_graph(tiny_presets):
    holder = _experts_with_lora("tiny-deepseek-ocr-2", transposed=False)
    inputs = _routed_tokens(holder.experts.base_layer.base_layer)
    group_expert_lora(holder)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(holder.experts)(*inputs)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_the_adapter_saved_is_peft_s(tiny_presets):
    """The same parameters under the same names: what is saved loads with plain peft."""
    bundle = load_model("tiny-deepseek-ocr-2", backend="hf")
    attach_lora(bundle, rank=4, alpha=8, dropout=0.0, groups=["attention", "experts"], seed=0,
                gradient_checkpointing=False, grouped_experts=False)
    plain = copy.deepcopy(bundle.model)
    assert group_expert_lora(bundle.model) == sum(
        1 for m in bundle.model.modules() if type(m).__name__.endswith("TextExperts"))
    saved, plain_saved = get_peft_model_state_dict(bundle.model), get_peft_model_state_dict(plain)
    assert saved.keys() == plain_saved.keys() and any("experts" in key for key in saved)
