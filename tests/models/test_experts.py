"""The padded experts path computes what transformers' experts implementations compute, and generation reads the same."""

import pytest
import torch
from PIL import Image
from transformers.integrations.moe import batched_mm_experts_forward, grouped_mm_experts_forward

from ocrloop.models import load_model
from ocrloop.models.experts import experts_path, padded_experts, padded_experts_forward, use_experts
from tests.conftest import FAST_RESOLUTION

MOE_PRESETS = ["tiny-deepseek-ocr", "tiny-deepseek-ocr-2"]


def _experts(preset):
    bundle = load_model(preset, backend="hf")
    return next(m for m in bundle.model.modules() if type(m).__name__.endswith("TextExperts"))


@pytest.mark.parametrize("routing", ["random", "all on one expert"])
@pytest.mark.parametrize("static_capacity", [False, True], ids=["busiest-expert slots", "one slot per pair"])
def test_padded_experts_equal_transformers_implementations(tiny_presets, routing, static_capacity):
    experts = _experts("tiny-deepseek-ocr-2")
    generator = torch.Generator().manual_seed(0)
    tokens, per_token = 13, 2
    hidden = torch.randn(tokens, experts.hidden_dim, generator=generator)
    if routing == "random":
        index = torch.stack([torch.randperm(experts.num_experts, generator=generator)[:per_token] for _ in range(tokens)])
    else:
        index = torch.stack([torch.tensor([0, 1 + i % (experts.num_experts - 1)]) for i in range(tokens)])
    weights = torch.rand(tokens, per_token, generator=generator)
    with torch.no_grad():
        padded = padded_experts(experts, hidden, index, weights, static_capacity=static_capacity)
        for reference in (grouped_mm_experts_forward, batched_mm_experts_forward):
            torch.testing.assert_close(padded, reference(experts, hidden, index, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", MOE_PRESETS)
def test_generation_reads_the_same_with_padded_experts(tiny_presets, preset):
    pages = [Image.effect_noise((300, 400), 50).convert("RGB"), Image.new("RGB", (340, 440), "white")]
    resolution = FAST_RESOLUTION[preset]
    plain = load_model(preset, backend="hf").generate(pages, prompt="free", resolution=resolution, max_new_tokens=10)
    bundle = load_model(preset, backend="hf")
    use_experts(bundle.model, "padded")
    assert bundle.generate(pages, prompt="free", resolution=resolution, max_new_tokens=10) == plain


@pytest.mark.parametrize("tokens", [1, 13, 3000])
def test_each_step_size_takes_its_path_and_computes_the_same(tiny_presets, tokens):
    """One page's decode step keeps batched_mm (fewer weights read), a batch's goes padded, a prefill grouped."""
    experts = _experts("tiny-deepseek-ocr-2")
    per_token = 2
    expected_path = {1: "batched_mm", 13: "padded", 3000: "grouped_mm"}[tokens]
    assert experts_path(tokens * per_token, experts.num_experts) == expected_path
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(tokens, experts.hidden_dim, generator=generator)
    index = torch.stack([torch.randperm(experts.num_experts, generator=generator)[:per_token] for _ in range(tokens)])
    weights = torch.rand(tokens, per_token, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(padded_experts_forward(experts, hidden, index, weights),
                                   batched_mm_experts_forward(experts, hidden, index, weights), rtol=1e-5, atol=1e-5)
