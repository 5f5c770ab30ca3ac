"""What LoRA on fused MoE experts costs a training step (issue 20): peft's parametrized expert weights against
ocrloop's LoRA beside the grouped GEMMs (``models.expert_lora``), eager and compiled.

One experts module of the published DeepSeek-OCR-2 architecture (64 experts, 1280 -> 2 x 896 -> 1280, 6 per token),
random bf16 weights, rank-16 LoRA on both fused weights, on one GPU:

    python bench/expert_lora_probe.py --out probe.json [--tokens 8192]

For each path it writes the median time of a forward and backward (CUDA events), the kernels one of them launches
(torch.profiler), the peak memory above the weights, and the largest difference of output and LoRA gradients to peft's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _experts(tokens: int, rank: int):
    from peft import LoraConfig, inject_adapter_in_model
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2TextExperts

    from ocrloop.models import FAMILIES
    from ocrloop.models.tokenizer import build_tiny_tokenizer

    family = FAMILIES["deepseek-ocr-2"]()
    config = family.random_config("full", build_tiny_tokenizer(family.special_tokens())).text_config
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(0)
    with torch.device("cuda"):
        experts = DeepseekOcr2TextExperts(config)
        for weight in (experts.gate_up_proj, experts.down_proj):
            torch.nn.init.normal_(weight, std=0.02)
    experts.to(torch.bfloat16).requires_grad_(False)
    holder = torch.nn.Module()
    holder.experts = experts
    holder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=[],
                                                target_parameters=["experts.gate_up_proj", "experts.down_proj"]), holder)
    with torch.no_grad():
        for name, parameter in holder.named_parameters():
            if "lora_" in name:
                parameter.normal_(std=0.02)
    generator = torch.Generator(device="cuda").manual_seed(1)
    hidden = torch.randn(tokens, config.hidden_size, device="cuda", dtype=torch.bfloat16, generator=generator)
    scores = torch.rand(tokens, config.n_routed_experts, device="cuda", generator=generator)
    weights, index = scores.softmax(-1).topk(config.num_experts_per_tok, dim=-1)
    return holder, hidden.requires_grad_(), index, weights.to(torch.bfloat16)


def _step(module, hidden, index, weights):
    output = module(hidden, index, weights)
    output.float().square().mean().backward()
    return output


def measure(path: str, compiled: bool, tokens: int, rank: int, repeats: int) -> tuple[dict, torch.Tensor, dict]:
    from ocrloop.models.expert_lora import group_expert_lora

    holder, hidden, index, weights = _experts(tokens, rank)
    if path == "grouped":
        group_expert_lora(holder)
    module = torch.compile(holder.experts) if compiled else holder.experts
    started = time.perf_counter()
    output = _step(module, hidden, index, weights)  # compiles, when compiled
    torch.cuda.synchronize()
    first_seconds = time.perf_counter() - started
    grads = {n: p.grad.float().clone() for n, p in holder.named_parameters() if p.grad is not None}
    for _ in range(3):
        _step(module, hidden, index, weights)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _step(module, hidden, index, weights)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated() - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        _step(module, hidden, index, weights)
        torch.cuda.synchronize()
    kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    result = {"path": path, "compiled": compiled, "median_ms": round(statistics.median(times), 3),
              "min_ms": round(min(times), 3), "first_call_seconds": round(first_seconds, 2), "kernels": len(kernels),
              "peak_above_start_mib": round(peak / 2**20, 1)}
    return result, output.detach().float(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": args.tokens,
               "rank": args.rank, "runs": []}
    reference = None
    for compiled in (False, True):
        for path in ("peft", "grouped"):
            result, output, grads = measure(path, compiled, args.tokens, args.rank, args.repeats)
            if reference is None:
                reference = (output, grads)
            result["max_output_difference"] = float((output - reference[0]).abs().max())
            result["max_lora_grad_difference"] = max(float((grads[n] - reference[1][n]).abs().max()) for n in grads)
            results["runs"].append(result)
            print(json.dumps(result), flush=True)
            with open(args.out, "w") as file:
                json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
