"""The distributed context: rank, world size, device and reductions.

One object, built once by the entry point and passed to what needs it; nothing
reads a global. Without ``torchrun`` it describes a single process.
"""

import datetime
import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 300.0

# how gloo and nccl report a peer that stopped responding or died
_PEER_FAILURE_SIGNS = (
    "Timed out",
    "timed out",
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)


class CollectiveFailure(RuntimeError):
    """A collective (all-reduce, barrier) failed because a peer stopped or died."""


class DistributedContext:
    """Describes this process's place in a data-parallel job.

    Args:
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes.
        device: the device this process computes on.
        initialized: whether a ``torch.distributed`` process group is up.
        collective_timeout: seconds a collective waits for the other ranks
            before this rank fails.
    """

    def __init__(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        initialized: bool = False,
        collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS,
    ):
        self.collective_timeout = collective_timeout
        self.rank = rank
        self.world_size = world_size
        self.device = device if device is not None else torch.device("cpu")
        self.initialized = initialized

    @classmethod
    def single_process(cls, device: torch.device | None = None) -> "DistributedContext":
        """A context for one process without a process group."""
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return cls(device=device)

    @classmethod
    def from_environment(
        cls,
        backend: str | None = None,
        *,
        collective_timeout: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS,
    ) -> "DistributedContext":
        """Join the process group ``torchrun`` describes, or run as one process.

        Args:
            backend: ``nccl`` or ``gloo``; by default ``nccl`` when CUDA is
                available, else ``gloo``.
            collective_timeout: seconds a collective waits for every rank; a
                rank that stops responding ends the job after this long.
        """
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls.single_process()
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("nccl", "gloo"):
            raise ValueError(
                f"distributed backend must be 'nccl' or 'gloo', got {backend!r}"
            )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                timeout=datetime.timedelta(seconds=collective_timeout),
            )
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            device=device,
            initialized=True,
            collective_timeout=collective_timeout,
        )

    def peer_failure(self, err: BaseException) -> CollectiveFailure | None:
        """``err`` explained as a peer that stopped responding or died, if it is.

        The backends' messages name neither the rank that failed nor the
        setting; this names both (with two processes the peer is known).
        """
        if not self.is_distributed or isinstance(err, CollectiveFailure):
            return None
        text = str(err)
        if not any(sign in text for sign in _PEER_FAILURE_SIGNS):
            return None
        others = [r for r in range(self.world_size) if r != self.rank]
        peer = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {others}"
        return CollectiveFailure(
            f"rank {self.rank} of {self.world_size}: a collective did not complete: "
            f"{peer} stopped responding (collective timeout "
            f"{self.collective_timeout:g} s, distributed_timeout_seconds) or died "
            f"({text.splitlines()[0][:200]})"
        )

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the only writer of files, logs and progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.initialized and self.world_size > 1

    def local_batch_size(self, global_batch_size: int) -> int:
        """This rank's share of a global batch; it must divide evenly."""
        if global_batch_size % self.world_size != 0:
            raise ValueError(
                f"batch_size={global_batch_size} is the global batch size and must be "
                f"divisible by the number of processes ({self.world_size}); "
                f"choose a multiple of {self.world_size}"
            )
        return global_batch_size // self.world_size

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a copy on the input's device; identity on one process)."""
        return self._all_reduce(tensor, dist.ReduceOp.SUM)

    def reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Maximum over ranks (a copy on the input's device)."""
        return self._all_reduce(tensor, dist.ReduceOp.MAX)

    def _all_reduce(self, tensor: torch.Tensor, op: Any) -> torch.Tensor:
        result = tensor.detach().clone()
        if not self.is_distributed:
            return result
        # nccl reduces only tensors on this rank's GPU
        on_device = result.to(self.device)
        dist.all_reduce(on_device, op=op)
        return on_device.to(tensor.device)

    def weighted_mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Global mean from per-rank sums and counts (not a mean of means)."""
        return self.reduce_sum(total) / self.reduce_sum(count)

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.is_distributed:
            dist.barrier()

    def shutdown(self, *, clean: bool = True) -> None:
        """Leave the process group.

        Call it after dropping the objects that use the group (DDP wrappers).

        Args:
            clean: every rank reached its end normally. The ranks then first
                free what still holds the group (a DDP reducer and its
                communication hook sit in reference cycles, freed only by the
                cyclic collector) while the group and the interpreter are
                alive, and wait for each other, so that no rank tears the
                group down while a peer still has a collective in flight.
                After a failure the group is destroyed at once: waiting
                could hang on a peer that is gone.
        """
        if not (self.initialized and dist.is_initialized()):
            return
        if clean:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()
        self.initialized = False

    @contextmanager
    def root_first(self) -> Iterator[None]:
        """Run a block on rank 0 before the other ranks (e.g. creating files)."""
        if not self.is_root:
            self.barrier()
        yield
        if self.is_root:
            self.barrier()
