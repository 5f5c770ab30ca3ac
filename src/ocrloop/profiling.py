"""Where a step's time goes: torch.profiler around a few training steps (or one generation), summarized as the share
of wall time the GPU was busy, kernels per step, the data loader's wait and the costliest operations."""

from __future__ import annotations

import re
import time
from typing import Any

import torch


def step_profiler(first_step: int, steps: int) -> Any:
    """A Trainer callback that profiles optimizer steps ``first_step`` .. ``first_step + steps - 1`` (CPU operations,
    and CUDA kernels on a GPU); ``summary()`` then gives the GPU-busy share of their wall time and the top operations.
    Summarizing takes seconds to minutes for a busy trace, so it is left for after training, outside the timed run."""
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepProfiler(TrainerCallback):
        def __init__(self):
            self.profile = None
            self.wall = None

        def summary(self) -> dict[str, Any]:
            return summarize_profile(self.profile, self.wall, steps) if self.wall is not None else {}

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == first_step and self.profile is None:
                if cuda:
                    torch.cuda.synchronize()
                activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.profile = torch.profiler.profile(activities=activities)
                self.profile.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profile is None or self.wall is not None or state.global_step != first_step + steps:
                return
            if cuda:
                torch.cuda.synchronize()
            self.wall = time.perf_counter() - self.started
            self.profile.__exit__(None, None, None)

    return StepProfiler()


def summarize_profile(profile: Any, wall_seconds: float, steps: int) -> dict[str, Any]:
    """GPU busy share (union of kernel intervals over wall time; None without a GPU), data-loader wait, top
    operations by GPU time (on a GPU) and by the host's own time."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in profile.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for start, stop in kernels:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    loader = sum(e.cpu_time_total for e in profile.events() if "DataLoader" in e.name and e.cpu_parent is None)
    averages = profile.key_averages()
    cuda = torch.cuda.is_available()
    return {
        "steps": steps, "wall_seconds": wall_seconds, "seconds_per_step": wall_seconds / steps,
        "gpu_busy_fraction": busy / 1e6 / wall_seconds if cuda else None, "kernels": len(kernels),
        "kernels_per_step": len(kernels) / steps, "data_loader_wait_seconds": loader / 1e6,
        "top_by_gpu_time": (averages.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60)
                            if cuda else None),
        "top_by_cpu_time": averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60),
    }


def dynamo_counts() -> dict[str, dict[str, int]]:
    """A snapshot of dynamo's process-wide counters: graph breaks by reason, and graphs compiled."""
    from torch._dynamo.utils import counters

    return {"graph_break": dict(counters["graph_break"]), "stats": dict(counters["stats"])}


def compiled_since(before: dict[str, dict[str, int]], most: int = 10) -> dict[str, Any]:
    """What dynamo did since ``before`` (``dynamo_counts``): graphs compiled, graph breaks met while tracing, and the
    ``most`` commonest reasons, so a run on another machine says where its compiled step breaks (each break runs the
    code after it outside the graph, as separate kernels)."""
    now = dynamo_counts()
    breaks: dict[str, int] = {}
    for reason, count in now["graph_break"].items():
        if count > before["graph_break"].get(reason, 0):
            # dynamo's reason, without its debug context and object addresses, so that one cause is one entry
            short = re.sub(r" at 0x[0-9a-f]+", "", reason.split("\n\n")[0])[:400]
            breaks[short] = breaks.get(short, 0) + count - before["graph_break"].get(reason, 0)
    return {"graphs": now["stats"].get("unique_graphs", 0) - before["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(breaks.values()),
            "graph_break_reasons": dict(sorted(breaks.items(), key=lambda item: -item[1])[:most])}
