"""MoE experts for decoding: a step's tokens grouped by expert into one padded batch, each expert's weights read once.

While decoding on a GPU, transformers' ``generate`` runs the experts as ``batched_mm``, which gathers the chosen
experts' weight matrices once per token: at batch 64 with 6 experts a token, about 2.6 GB a layer for DeepSeek-OCR's
decoder. A profile put that at 17 of a decode step's 21 ms (H200, docs/performance-notes.md). Here each step reads
every expert's weights once (0.44 GB a layer at full size) and runs two batched matrix products over an
(experts, slots, width) buffer. Measured on an H200 with CUDA graphs: a batch-64 decode step fell from 22.0 to 7.4 ms.
Steps with fewer (token, expert) pairs than experts (one page alone: 6) keep ``batched_mm``, which then reads fewer
weights (one page alone: 2.4 ms a step against 3.3 padded). Inputs of many tokens (prefill) go to transformers'
grouped GEMMs, where a padded buffer would grow with experts x tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.integrations.moe import batched_mm_experts_forward, grouped_mm_experts_forward

# ocrloop's experts paths are registered under their own names: generate leaves those as they are while decoding
# (on a GPU it switches only "grouped_mm" to "batched_mm", which gathers each chosen expert's weights per token).
KEPT_GROUPED_MM = "ocrloop_grouped_mm"
PADDED_EXPERTS = "ocrloop_padded"
# (token, expert) pairs above which the grouped GEMMs are used: a decode step of batch 64 x 6 experts has 384.
GROUPED_ABOVE_PAIRS = 4096


def _static_shapes(hidden_states: torch.Tensor) -> bool:
    """Whether shapes must not depend on the data: compiled or captured into a CUDA graph (no host reads)."""
    if torch.compiler.is_compiling():
        return True
    return hidden_states.is_cuda and torch.cuda.is_current_stream_capturing()


def padded_experts(experts: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                   *, static_capacity: bool) -> torch.Tensor:
    """The experts' output for ``hidden_states`` (tokens, width) routed to ``top_k_index`` with ``top_k_weights``.

    Each expert gets as many slots as the busiest expert needs (one host read), or, with ``static_capacity``, one
    slot per (token, expert) pair, so that nothing is ever dropped and shapes stay fixed."""
    tokens, width = hidden_states.shape
    per_token = top_k_index.size(-1)
    expert_count = experts.num_experts
    expert_ids = top_k_index.reshape(-1)
    pairs = expert_ids.numel()
    sorted_ids, order = torch.sort(expert_ids, stable=True)
    # histc, not bincount or one_hot, which read the data on the host (no CUDA graphs); CPUs count floats only.
    counts = torch.histc(sorted_ids.float() if sorted_ids.device.type == "cpu" else sorted_ids.int(), bins=expert_count,
                         min=0, max=expert_count - 1).long()
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(pairs, device=expert_ids.device) - starts[sorted_ids]
    capacity = pairs if static_capacity else int(counts.max())

    grouped = hidden_states.new_zeros(expert_count, capacity, width)
    grouped[sorted_ids, slots] = hidden_states[order // per_token]
    first = experts.gate_up_proj if experts.has_gate else experts.up_proj
    projected = torch.bmm(grouped, first if experts.is_transposed else first.transpose(1, 2))
    if experts.has_bias:
        projected = projected + (experts.gate_up_proj_bias if experts.has_gate else experts.up_proj_bias)[:, None, :]
    activated = experts._apply_gate(projected) if experts.has_gate else experts.act_fn(projected)
    down = experts.down_proj
    output = torch.bmm(activated, down if experts.is_transposed else down.transpose(1, 2))
    if experts.has_bias:
        output = output + experts.down_proj_bias[:, None, :]

    weighted = output[sorted_ids, slots] * top_k_weights.reshape(-1)[order].unsqueeze(-1)  # float32, as transformers
    unsorted = torch.empty_like(weighted)
    unsorted[order] = weighted
    return unsorted.view(tokens, per_token, width).sum(dim=1).to(hidden_states.dtype)


def experts_path(pairs: int, expert_count: int) -> str:
    """Which experts computation a step of ``pairs`` (token, expert) pairs takes: ``batched_mm`` while it reads fewer
    weights than every expert's once, ``grouped_mm`` for prefill-sized inputs, ``padded`` between. Shapes alone
    decide, so a captured CUDA graph keeps its path."""
    if pairs < expert_count:
        return "batched_mm"
    return "grouped_mm" if pairs > GROUPED_ABOVE_PAIRS else "padded"


def padded_experts_forward(experts: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor) -> torch.Tensor:
    """The experts implementation registered as ``PADDED_EXPERTS`` (see ``experts_path``)."""
    path = experts_path(top_k_index.numel(), experts.num_experts)
    if path == "batched_mm":
        return batched_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights)
    if path == "grouped_mm":
        return grouped_mm_experts_forward(experts, hidden_states, top_k_index, top_k_weights)
    return padded_experts(experts, hidden_states, top_k_index, top_k_weights,
                          static_capacity=_static_shapes(hidden_states))


def use_experts(model: Any, path: str) -> None:
    """Run ``model``'s MoE experts through one of ocrloop's paths, in prefill and decoding alike: ``grouped_mm``
    (transformers' grouped GEMMs; not CUDA-graph compatible: use the dynamic cache) or ``padded``
    (``padded_experts_forward``). transformers leaves a model without experts as it is."""
    from transformers.integrations import moe

    name, forward = {"grouped_mm": (KEPT_GROUPED_MM, grouped_mm_experts_forward),
                     "padded": (PADDED_EXPERTS, padded_experts_forward)}[path]
    moe.ALL_EXPERTS_FUNCTIONS.register(name, forward)
    model.set_experts_implementation(name)
