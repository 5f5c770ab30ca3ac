"""Where this process stands in a ``torch.distributed`` launch (``torchrun``, ``accelerate launch``).

The launcher sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``--gpus N`` runs the command through torchrun itself:
``relaunch``), and the Hugging Face ``Trainer`` wraps the model in DistributedDataParallel. What ocrloop adds: one
process, rank 0, writes what must exist once (the registry rows, the run card, the saved model, the OCR index); the
feature pass and batch OCR are shared out by rank; the loop runs on rank 0 and hands training jobs to the others.
"""

from __future__ import annotations

import os
import subprocess
import sys


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


def local_rank() -> int:
    """This process's rank on its machine (which GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def shard(items: list) -> list:
    """This process's share of ``items``: every ``world_size()``-th, from its rank (all of them in one process)."""
    return items[rank()::world_size()]


def launcher(processes: int) -> list[str]:
    """The command that starts ``python -m ...`` as ``processes`` processes on this machine (torchrun above one)."""
    if processes == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def launch_environment(processes: int) -> dict[str, str]:
    """The environment for ``launcher(processes)``: torchrun gives each process one CPU thread unless
    ``OMP_NUM_THREADS`` is set, which starves the page preparation (decoding, resizing, collating); here each
    process gets its share of the cores."""
    threads = str(max(1, (os.cpu_count() or 1) // processes))
    return {"OMP_NUM_THREADS": threads, **os.environ, "PYTHONUNBUFFERED": "1"}


def relaunch(processes: int) -> int | None:
    """This same ``ocrloop`` command as ``processes`` processes through torchrun, when it asks for more than one and
    no launcher started it; returns their exit status (None: nothing to launch, go on here)."""
    if processes <= 1 or "RANK" in os.environ:
        return None
    import torch

    from ocrloop.errors import OcrloopError

    if torch.cuda.is_available() and processes > torch.cuda.device_count():
        raise OcrloopError(f"--gpus {processes}: this machine has {torch.cuda.device_count()} GPU(s)")
    command = [*launcher(processes), "-m", "ocrloop", *sys.argv[1:]]
    return subprocess.run(command, env=launch_environment(processes)).returncode


def join_process_group() -> None:
    """Join the launcher's process group, for work that coordinates itself (batch OCR, the loop; a bare ``train``
    leaves it to the Trainer, which then uses this group): NCCL on GPUs, each process on its own, gloo on CPUs."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank()))
    else:
        dist.init_process_group("gloo")


def send_to_all(payload: object) -> None:
    """Rank 0 hands ``payload`` (any picklable object) to every other process, which waits for it in
    ``receive_from_main``."""
    import torch.distributed as dist

    if world_size() > 1:
        dist.broadcast_object_list([payload], src=0)


def receive_from_main() -> object:
    """What rank 0 sends next with ``send_to_all``."""
    import torch.distributed as dist

    box: list[object] = [None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_decides(value: object) -> object:
    """Rank 0's ``value`` in every process (``value`` itself in a single process): for a decision only rank 0 can make
    (it alone validates, it keeps the clock) that every process must follow, or one waits in a collective the others
    never join. What the other processes pass is replaced."""
    if world_size() == 1:
        return value
    if is_main_process():
        send_to_all(value)
        return value
    return receive_from_main()


def slowest(seconds: float) -> float:
    """The largest of every process's ``seconds`` (``seconds`` itself in a single process)."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())


def all_succeeded(succeeded: bool) -> bool:
    """True when every process's ``succeeded`` is (``succeeded`` itself in a single process)."""
    return slowest(0.0 if succeeded else 1.0) == 0.0


def leave_process_group() -> None:
    """Leave the launcher's process group, once whatever still uses it (a finished run's DDP wrapper) is gone."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # A DDP wrapper left in a reference cycle is otherwise freed at exit, after its group is destroyed: under
        # gloo the loop's processes then aborted in about one run of five ("terminate called without an active
        # exception"), and in none of twenty with this collection.
        gc.collect()
        dist.destroy_process_group()
