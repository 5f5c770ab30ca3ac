"""Where this process stands in a ``torch.distributed`` launch (``torchrun``, ``accelerate launch``).

ocrloop does not start processes or pick a backend itself: the launcher sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``, and the Hugging Face ``Trainer`` wraps the model in DistributedDataParallel (NCCL on GPUs, gloo
on CPUs). What ocrloop adds is that one process, rank 0, writes what must exist once: the registry rows, the run
card and the saved model.
"""

from __future__ import annotations

import os


def rank() -> int:
    """This process's global rank (0 when not launched for several processes)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes take part (1 when not launched for several processes)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True for the one process that writes shared records and files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
