"""Why a training step is slower on two GPUs than on one (issue 20): the gradient all-reduce, or the host?

Run under torchrun with two processes on one host:

    torchrun --standalone --nproc-per-node 2 bench/host_contention_probe.py --out probe.json

It measures, and rank 0 writes as JSON:
* whether the GPUs reach each other directly (peer access) and how long an all-reduce of the LoRA gradients of
  the bench's run takes (63.1 M float32 values, as DDP reduces them; NCCL_DEBUG=INFO shows the transport);
* how fast one process launches small kernels (the launch-bound part of a step) alone, while the other waits,
  and with both processes launching at once.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def _timed(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def _launches_per_second(count: int = 20_000) -> float:
    x = torch.zeros(16, device="cuda")
    for _ in range(200):  # warm
        x.add_(1)
    return 1.0 / _timed(lambda: x.add_(1), count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--values", type=int, default=63_091_712, help="gradient values reduced per step")
    args = parser.parse_args()
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    result: dict = {"world_size": dist.get_world_size(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                    "cpu_count": os.cpu_count(), "peer_access": torch.cuda.can_device_access_peer(0, 1)}

    gradients = torch.ones(args.values, device="cuda")
    dist.all_reduce(gradients)
    seconds = _timed(lambda: dist.all_reduce(gradients), 20)
    size = gradients.numel() * gradients.element_size()
    result["all_reduce"] = {"bytes": size, "seconds": seconds,
                            "bus_gb_per_s": 2 * (dist.get_world_size() - 1) / dist.get_world_size() * size / seconds / 1e9}

    dist.barrier()
    alone = _launches_per_second() if rank == 0 else None
    dist.barrier()
    together = _launches_per_second()
    dist.barrier()
    result["kernel_launches_per_second"] = {"rank0_alone": alone, "rank0_with_rank1_launching": together}
    if rank == 0:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
        print(json.dumps(result, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
