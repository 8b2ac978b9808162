"""Threads and memory allocator of a training or evaluation process, set once.

The entry points (``python -m fme.ace.train | evaluate | inference``)
call :func:`restart_with_huge_pages` first, then :func:`configure_process`:

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
- **Allocator** (``FME_ALLOCATOR``): unless ``FME_ALLOCATOR=system``, two
  glibc settings. (1) Blocks from 32 MiB up are mapped from the operating
  system and returned to it when freed, smaller ones are reused from the heap
  (fixed mmap threshold, trim threshold 128 MiB): the peak resident memory is
  the peak of live tensors; keeping large freed blocks in the heap instead
  fragments it with the 100-200 MB tensors of a 1-degree model (1.55x the
  peak memory). (2) Mapped blocks use transparent huge pages (glibc's
  ``glibc.malloc.hugetlb=1`` tunable), so a block of 100 MB is faulted in
  with 50 faults, not 25,000. The tunable is read when a process starts, so
  :func:`restart_with_huge_pages` re-executes the entry point once with it,
  before torch is imported.
"""

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence

THREADS_ENV = "FME_NUM_THREADS"
ALLOCATOR_ENV = "FME_ALLOCATOR"
_ALLOCATOR_CHOICES = ("tuned", "system")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb"
# Blocks from 32 MiB up are mapped and unmapped; the heap is trimmed above 128
# MiB of free memory at its top and grows in steps of 64 MiB.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 128 << 20
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
    import torch

    environ = os.environ if environ is None else environ
    threads = resolve_num_threads(environ, available_cores=_available_cores())
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _allocator_choice(environ: Mapping[str, str]) -> str:
    choice = environ.get(ALLOCATOR_ENV, "tuned")
    if choice not in _ALLOCATOR_CHOICES:
        raise ValueError(
            f"{ALLOCATOR_ENV}={choice!r} is not allowed; use 'tuned' (default: "
            "large blocks on huge pages, returned when freed; small ones "
            "reused) or 'system' (leave the C allocator as it is)"
        )
    return choice


def huge_pages_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The environment to restart with for huge pages, or None if not needed.

    None with ``FME_ALLOCATOR=system``, without glibc, or when
    ``GLIBC_TUNABLES`` already sets ``glibc.malloc.hugetlb`` (by a user or an
    earlier restart).

    Raises:
        ValueError: if ``FME_ALLOCATOR`` is not ``tuned`` or ``system``.
    """
    if _allocator_choice(environ) == "system" or not _is_glibc():
        return None
    tunables = environ.get(TUNABLES_ENV, "")
    if HUGE_PAGES_TUNABLE in tunables:
        return None
    added = f"{HUGE_PAGES_TUNABLE}=1"
    return {**environ, TUNABLES_ENV: f"{tunables}:{added}" if tunables else added}


def restart_with_huge_pages(argv: Sequence[str] | None = None) -> None:
    """Re-execute this process with glibc's huge-page tunable, if it lacks it.

    Call first thing in an entry point, before torch is imported: the process
    image is replaced (same PID, same arguments ``argv``, default
    ``sys.orig_argv``), so anything done before is done again. A bad
    ``FME_ALLOCATOR`` is left for :func:`configure_process` to report.
    """
    try:
        environment = huge_pages_environment(os.environ)
    except ValueError:
        return
    if environment is None or not sys.executable:
        return
    try:
        os.execve(
            sys.executable, list(sys.orig_argv if argv is None else argv), environment
        )
    except OSError as err:  # run on without huge pages rather than fail
        logging.warning("could not restart with huge pages (%s); continuing", err)


def _is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        return False


def apply_allocator_settings(environ: Mapping[str, str] | None = None) -> bool:
    """Set glibc's mmap and trim thresholds; returns whether they were set.

    Raises:
        ValueError: if ``FME_ALLOCATOR`` is not ``tuned`` or ``system``.
    """
    environ = os.environ if environ is None else environ
    if _allocator_choice(environ) == "system":
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
