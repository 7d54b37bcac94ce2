"""Training on several processes: PyTorch's DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N -m minimagen train ...`` starts N copies of the same command and tells each,
through its environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), where it stands.
``start()`` joins them into one process group (NCCL between GPUs, gloo between CPU processes), and a
``Ranks`` given to the ``Trainer`` (``parallel=``) shares each step between them:

* every process draws the whole batch's random numbers (which items, t, eps, caption dropout,
  augmentation) from the same seeded generator and keeps its own slice, so each renders and runs only
  its share of the images, and the generator's state stays the same everywhere;
* DistributedDataParallel averages the gradients, so every process takes the same optimizer step, and
  the run equals a one-process run with the same ``--batch-size`` (the global batch), up to the order
  in which floating-point sums are taken;
* only rank 0 writes checkpoints, sample grids and progress; every process resumes from the same file,
  so a run resumes on the same or on another number of processes alike (the batch must divide).

Multi-node: the same command on every node, with ``--nnodes``, ``--node_rank`` and a rendezvous address
(``--rdzv_endpoint host:port``); see the README.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place in a job of ``world`` processes, for ``Trainer(parallel=...)``."""

    rank: int
    world: int
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.world, int) and self.world >= 1 and 0 <= self.rank < self.world):
            raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {self.rank}, world {self.world}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local(self, batch_size: int) -> slice:
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes {self.world}: "
                             f"each takes an equal share of every batch")
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        on_gpu = next(model.parameters()).device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_environment(environ=None) -> Ranks | None:
    """The ``Ranks`` torchrun describes in the environment, or None outside torchrun (or with one process)."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    try:
        ranks = Ranks(int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as error:
        raise ValueError(f"torchrun's environment is incomplete or malformed (RANK, WORLD_SIZE, LOCAL_RANK): {error}")
    return ranks if ranks.world > 1 else None


def start(ranks: Ranks, device: str = "cpu", timeout_s: float = 600.0) -> torch.device:
    """Join the job's process group; returns this process's device (``cuda:LOCAL_RANK`` on GPUs).

    ``timeout_s`` bounds how long a collective waits for a process that has died or hangs, so the others
    stop with an error instead of waiting for ever.
    """
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if on_gpu else "gloo", rank=ranks.rank, world_size=ranks.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return torch.device("cuda", ranks.local_rank) if on_gpu else torch.device("cpu")


def stop() -> None:
    """Leave the process group (at the end of a run, or after a failure)."""
    if dist.is_initialized():
        dist.destroy_process_group()
