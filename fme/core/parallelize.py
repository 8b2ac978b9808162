"""The one place a network is wrapped for training (compiled, data-parallel)."""

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from fme.core.compiled_network import CompiledNetwork, compile_network
from fme.core.distributed import DistributedContext


def wrap_data_parallel(
    module: torch.nn.Module, dist: DistributedContext, *, compile: bool = False
) -> torch.nn.Module:
    """``module`` on ``dist.device``, wrapped in DDP when several processes train.

    Model code stays unaware of parallelism: this is the only place that
    wraps it. A module already wrapped is unwrapped first (a new training
    phase with other frozen parameters needs a new wrapper).

    Args:
        module: the network.
        dist: the distributed context.
        compile: run the network through ``torch.compile`` (inside the DDP
            wrapper), eagerly if compiling fails.
    """
    module = unwrap_network(module).to(dist.device)
    if compile:
        module = compile_network(module)
    if not dist.is_distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def unwrap_network(module: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP and compile wrappers (``module`` if not wrapped)."""
    while isinstance(module, DistributedDataParallel | CompiledNetwork):
        module = module.module
    return module


def no_sync_context(
    module: torch.nn.Module,
) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of contexts that skip DDP's gradient all-reduce (no-op otherwise)."""
    if isinstance(module, DistributedDataParallel):
        return module.no_sync
    return contextlib.nullcontext
