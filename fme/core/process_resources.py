"""Threads and memory allocator of a training or evaluation process, set once.

The entry points (``python -m fme.ace.train | evaluate | inference``)
call :func:`configure_process` before anything else:

- **Threads** (``FME_NUM_THREADS``): the number of intra-op threads of torch
  in this process. Unset: ``OMP_NUM_THREADS`` if the user set it, otherwise 1.
  One thread per process is the default because a step with two threads
  slows down several-fold as soon as another process (a data-loader worker,
  a second job) competes for a core, while two threads gain only ~1.5x on an
  idle machine. ``FME_NUM_THREADS=auto`` uses the cores this process may run
  on divided by the number of processes on the node (``LOCAL_WORLD_SIZE``
  under ``torchrun``), so the ranks of one node share its cores without
  oversubscribing them. Data-loader worker processes always run one thread
  (torch sets this in every worker).
- **Allocator** (``FME_ALLOCATOR``): with glibc, large tensors are by default
  returned to the operating system when freed and faulted in again on the
  next step (tens of thousands of page faults per step). Unless
  ``FME_ALLOCATOR=system``, the mmap and trim thresholds are raised so freed
  memory is reused within the process; the peak resident memory is the same,
  it is just not handed back between steps.
"""

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

import torch

THREADS_ENV = "FME_NUM_THREADS"
ALLOCATOR_ENV = "FME_ALLOCATOR"
_ALLOCATOR_CHOICES = ("tuned", "system")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# Allocations up to 1 GiB come from the heap, which is trimmed only above 2 GiB
# of free memory at its top; the heap grows in steps of 64 MiB.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1
_TOP_PAD = 64 << 20


def resolve_num_threads(
    environ: Mapping[str, str], *, available_cores: int
) -> int | None:
    """The intra-op thread count the policy asks for, or None to keep torch's.

    Args:
        environ: the process environment.
        available_cores: cores this process may run on.

    Raises:
        ValueError: if ``FME_NUM_THREADS`` is neither ``auto`` nor a positive
            integer.
    """
    value = environ.get(THREADS_ENV)
    if value is None:
        # torch already honours a user's OMP_NUM_THREADS
        return None if "OMP_NUM_THREADS" in environ else 1
    if value.strip().lower() == "auto":
        local_processes = int(environ.get("LOCAL_WORLD_SIZE", "1"))
        return max(1, available_cores // max(1, local_processes))
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"{THREADS_ENV}={value!r} is not allowed; use a positive integer "
            "(intra-op threads per process) or 'auto' (the node's cores divided "
            "by its processes)"
        )
    return threads


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def apply_thread_policy(environ: Mapping[str, str] | None = None) -> int:
    """Set torch's intra-op threads by the policy; returns the count in use."""
    environ = os.environ if environ is None else environ
    threads = resolve_num_threads(environ, available_cores=_available_cores())
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def apply_allocator_settings(environ: Mapping[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds; returns whether they were set.

    Raises:
        ValueError: if ``FME_ALLOCATOR`` is not ``tuned`` or ``system``.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(ALLOCATOR_ENV, "tuned")
    if choice not in _ALLOCATOR_CHOICES:
        raise ValueError(
            f"{ALLOCATOR_ENV}={choice!r} is not allowed; use 'tuned' (default: "
            "keep freed memory for the next step) or 'system' (leave the C "
            "allocator as it is)"
        )
    if choice == "system":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        logging.debug("no mallopt in the C library: allocator left as it is")
        return False
    ok = True
    for option, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD),
    ):
        ok = bool(mallopt(ctypes.c_int(option), ctypes.c_int(value))) and ok
    return ok


def configure_process() -> None:
    """Apply the thread policy and the allocator settings (once, at start)."""
    threads = apply_thread_policy()
    tuned = apply_allocator_settings()
    logging.debug("intra-op threads: %d, allocator tuned: %s", threads, tuned)
