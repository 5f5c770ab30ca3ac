"""LoRA on fused MoE experts, added beside the experts' grouped GEMMs instead of folded into their weights.

peft puts LoRA on a fused expert stack (``LoraConfig.target_parameters``) by parametrizing the weight: every forward
builds ``W + s * lhs @ rhs`` for all experts, a full copy of the stack (DeepSeek-OCR-2: 147 M values a layer for
``gate_up_proj``), and the backward computes the gradient of that whole copy before reducing it to the factors.
torch.compile cannot trace the parametrization either (the class's ``__delattr__``, ``set_`` on the parameter): 3
compiled steps of the tiny DeepSeek-OCR-2 broke 15 times there. Here the frozen weights run through the same grouped
GEMMs as without LoRA, and each projection adds ``s * (x @ first) @ second`` with the same grouping of tokens by
expert: two GEMMs of rank width, no copy of the stack, no gradient for it, nothing dynamo cannot trace.

The adapter stays peft's: the same parameters under the same names, so a saved adapter loads, merges and serves with
plain peft. Only the forward of the outermost ``ParamWrapper`` around each experts module changes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import ParamWrapper
from transformers.integrations.moe import _grouped_mm

Factors = dict[str, tuple[torch.Tensor, torch.Tensor, float]]


@torch.library.custom_op("ocrloop::row_major_copy", mutates_args=())
def row_major_copy(factor: torch.Tensor) -> torch.Tensor:
    """A row-major copy of ``factor`` that inductor keeps row-major.

    Compiled, a plain ``contiguous()`` is a copy inductor may lay out as it likes, and for a LoRA factor permuted out
    of peft's (out, rank x experts) layout it keeps the experts' stride at 1, which grouped_mm refuses ("Invalid
    strides/sizes", torch 2.13). A custom op's output keeps the strides its fake gives."""
    return factor.clone(memory_format=torch.contiguous_format)


@row_major_copy.register_fake
def _(factor: torch.Tensor) -> torch.Tensor:
    return torch.empty(factor.shape, dtype=factor.dtype, device=factor.device)


row_major_copy.register_autograd(lambda ctx, grad: grad)


def _row_major(factor: torch.Tensor) -> torch.Tensor:
    # Eager, contiguous() is row-major already and costs no custom-op dispatch.
    return row_major_copy(factor) if torch.compiler.is_compiling() else factor.contiguous()


def _wrapped_experts(wrapper: ParamWrapper) -> tuple[list[ParamWrapper], torch.nn.Module]:
    """The chain of ParamWrappers from ``wrapper`` inwards, and the experts module they wrap."""
    chain, module = [], wrapper
    while isinstance(module, ParamWrapper):
        chain.append(module)
        module = module.base_layer
    return chain, module


def _active_factors(chain: list[ParamWrapper]) -> Factors | None:
    """Each wrapped parameter's ``(lhs, rhs, scaling)`` (its delta is ``scaling * lhs @ rhs`` in the weight's layout);
    None when peft's own forward must run: an adapter disabled or merged, or more than one active."""
    factors: Factors = {}
    for wrapper in chain:
        if wrapper.disable_adapters or wrapper.merged:
            return None
        adapters = [a for a in wrapper.active_adapters if a in wrapper.lora_A]
        if len(adapters) != 1:
            return None
        factors[wrapper.parameter_name] = wrapper.get_delta_factors(adapters[0])
    return factors


class GroupedExpertLoRA(ParamWrapper):
    """peft's outermost ParamWrapper around an experts module, computing its LoRA beside the grouped GEMMs."""

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                *args: Any, **kwargs: Any) -> torch.Tensor:
        chain, experts = _wrapped_experts(self)
        factors = None if args or kwargs else _active_factors(chain)
        if factors is None:
            return super().forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs)
        return experts_with_lora(experts, hidden_states, top_k_index, top_k_weights, factors)


def _projection(experts: torch.nn.Module, name: str, inputs: torch.Tensor, offsets: torch.Tensor,
                expert_ids: torch.Tensor, factors: Factors) -> torch.Tensor:
    """``inputs`` (sorted by expert) through each expert's ``name`` weight, plus its LoRA when it has one."""
    weight = getattr(experts, name)
    output = _grouped_mm(inputs, weight if experts.is_transposed else weight.transpose(-2, -1), offsets)
    if name in factors:
        lhs, rhs, scaling = factors[name]
        # The delta lhs @ rhs is laid out like the weight: (in, out) when transposed, else (out, in).
        first, second = (lhs, rhs) if experts.is_transposed else (rhs.transpose(-2, -1), lhs.transpose(-2, -1))
        # grouped_mm wants rows of whole 16 bytes: a rank-4 bf16 factor's 8 take zero columns (the same product)
        missing = -first.shape[-1] % (16 // first.element_size())
        if missing:
            first, second = F.pad(first, (0, missing)), F.pad(second, (0, 0, 0, missing))
        low_rank = _grouped_mm(inputs, _row_major(first), offsets) * scaling
        output = output + _grouped_mm(low_rank, _row_major(second), offsets)
    if experts.has_bias:
        output = output + getattr(experts, f"{name}_bias")[expert_ids]
    return output


def experts_with_lora(experts: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                      top_k_weights: torch.Tensor, factors: Factors) -> torch.Tensor:
    """What transformers' grouped experts compute for ``hidden_states`` (tokens, width) routed to ``top_k_index``
    with ``top_k_weights``, with each weight named in ``factors`` plus its low-rank delta."""
    tokens, per_token = top_k_index.shape
    expert_ids, order = torch.sort(top_k_index.reshape(-1))
    grouped = hidden_states[order // per_token]
    # histc, not bincount: no host sync and no data-dependent shape (CPU histc takes floats only)
    counts = torch.histc(expert_ids.float() if expert_ids.device.type == "cpu" else expert_ids.int(),
                         bins=experts.num_experts, min=0, max=experts.num_experts - 1)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    first = "gate_up_proj" if experts.has_gate else "up_proj"
    projected = _projection(experts, first, grouped, offsets, expert_ids, factors)
    activated = experts._apply_gate(projected) if experts.has_gate else experts.act_fn(projected)
    output = _projection(experts, "down_proj", activated, offsets, expert_ids, factors)
    output = output * top_k_weights.reshape(-1)[order].unsqueeze(-1)
    restored = torch.empty_like(output)
    restored[order] = output
    return restored.view(tokens, per_token, -1).sum(dim=1).to(hidden_states.dtype)


def group_expert_lora(model: torch.nn.Module) -> int:
    """Give every LoRA on a fused experts module (peft's ParamWrappers with more than one expert, one adapter) the
    grouped forward above; return how many experts modules got it. Modules that do not qualify keep peft's."""
    grouped = 0
    for parent in model.modules():
        if isinstance(parent, ParamWrapper):
            continue
        for child in parent.children():
            if not isinstance(child, ParamWrapper):
                continue
            chain, experts = _wrapped_experts(child)
            if all(w.num_experts > 1 for w in chain) and all(
                    hasattr(experts, a) for a in ("is_transposed", "has_gate", "has_bias", "num_experts")):
                # A subclass, not a new module: isinstance checks, parameter names and merging stay peft's.
                child.__class__ = GroupedExpertLoRA
                grouped += 1
    return grouped
