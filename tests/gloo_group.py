"""Run a function in several spawned processes that share one gloo group.

The rendezvous store is created here, in the parent, on a port the operating
system picks while binding it, so no other process can take the port between
choosing and binding it. Each worker joins as a store client, runs the
function, and leaves the group through ``DistributedContext.shutdown``: after
a normal end, cycles are collected and every rank waits for the others before
the group is destroyed.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from fme.core.distributed import DistributedContext

HOST = "127.0.0.1"


def _worker(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., None],
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(1)
    store = torch_dist.TCPStore(HOST, port, is_master=False)
    torch_dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    dist = DistributedContext(rank=rank, world_size=world_size, initialized=True)
    finished = False
    try:
        fn(dist, *args)
        finished = True
    finally:
        dist.shutdown(clean=finished)


def run_in_gloo_group(fn: Callable[..., None], *args: Any, world_size: int = 2) -> None:
    """Call ``fn(dist, *args)`` on ``world_size`` spawned ranks; raise if any fails.

    ``fn`` must be a module-level function (it is pickled to the workers).
    """
    store = torch_dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False)
    mp.spawn(
        _worker, args=(world_size, store.port, fn, args), nprocs=world_size, join=True
    )
