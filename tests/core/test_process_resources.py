import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from fme.core.process_resources import (
    apply_allocator_settings,
    apply_thread_policy,
    resolve_num_threads,
)


@pytest.mark.parametrize(
    "environ, cores, expected",
    [
        ({}, 8, 1),
        ({"OMP_NUM_THREADS": "3"}, 8, None),
        ({"FME_NUM_THREADS": "3", "OMP_NUM_THREADS": "1"}, 8, 3),
        ({"FME_NUM_THREADS": "auto"}, 8, 8),
        ({"FME_NUM_THREADS": "auto", "LOCAL_WORLD_SIZE": "2"}, 8, 4),
        ({"FME_NUM_THREADS": "auto", "LOCAL_WORLD_SIZE": "3"}, 8, 2),
        ({"FME_NUM_THREADS": "AUTO", "LOCAL_WORLD_SIZE": "4"}, 2, 1),
    ],
)
def test_thread_count_follows_the_policy(environ, cores, expected):
    assert resolve_num_threads(environ, available_cores=cores) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_bad_thread_setting_names_the_variable_and_the_choices(value):
    with pytest.raises(ValueError, match="FME_NUM_THREADS.*positive integer.*auto"):
        resolve_num_threads({"FME_NUM_THREADS": value}, available_cores=4)


def test_thread_policy_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert apply_thread_policy({"FME_NUM_THREADS": "2"}) == 2
        assert torch.get_num_threads() == 2
        assert apply_thread_policy({}) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


class _WorkerThreads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(torch.get_num_threads())


def test_data_loader_workers_run_one_thread():
    before = torch.get_num_threads()
    try:
        apply_thread_policy({"FME_NUM_THREADS": "2"})
        loader = DataLoader(_WorkerThreads(), batch_size=1, num_workers=1)
        assert [int(b) for b in loader] == [1, 1]
    finally:
        torch.set_num_threads(before)


def test_bad_allocator_setting_names_the_choices():
    with pytest.raises(ValueError, match="FME_ALLOCATOR.*tuned.*system"):
        apply_allocator_settings({"FME_ALLOCATOR": "jemalloc"})
    assert apply_allocator_settings({"FME_ALLOCATOR": "system"}) is False


def _transparent_huge_pages_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


_ALLOCATION_SCRIPT = textwrap.dedent(
    """
    import resource
    from fme.core.process_resources import restart_with_huge_pages

    restart_with_huge_pages()  # as the entry points do

    import torch
    from fme.core.process_resources import apply_allocator_settings

    def faults_per_alloc():
        for _ in range(12):  # glibc settles after a few heap extensions
            torch.ones(16 << 20)
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.ones(16 << 20)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    tuned = apply_allocator_settings()
    faults = faults_per_alloc()
    big = torch.ones(64 << 20)  # 256 MiB
    held = resident_mib()
    del big
    print(tuned, faults, held - resident_mib())
    """
)


def _allocation_run(allocator: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["FME_ALLOCATOR"] = allocator
    return subprocess.run(
        [sys.executable, "-c", _ALLOCATION_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()


def test_tuned_allocator_faults_large_tensors_in_on_huge_pages_and_returns_them():
    # In fresh processes started like the entry points: page faults of
    # allocating, touching and freeing a 64 MiB tensor, with the C library's
    # defaults and with the tuned settings; then whether freeing a 256 MiB
    # tensor gives its memory back (the peak is that of live tensors).
    system = _allocation_run("system")
    tuned = _allocation_run("tuned")
    if tuned[0] != "True":
        pytest.skip("the C library has no mallopt (not glibc)")
    if not _transparent_huge_pages_available():
        pytest.skip("the kernel has transparent huge pages disabled")
    before, after = float(system[1]), float(tuned[1])
    assert before > 10_000  # 16 Mi floats are 16k pages of 4 KiB
    assert after < 0.1 * before
    assert float(tuned[2]) > 250  # MiB returned when the 256 MiB tensor is freed


def test_huge_pages_are_added_to_the_tunables_once():
    from fme.core.process_resources import huge_pages_environment

    if huge_pages_environment({}) is None:
        pytest.skip("not glibc")
    assert huge_pages_environment({"A": "1"}) == {
        "A": "1",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
    }
    assert huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    }
    assert huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert huge_pages_environment({"FME_ALLOCATOR": "system"}) is None
    with pytest.raises(ValueError, match="FME_ALLOCATOR.*tuned.*system"):
        huge_pages_environment({"FME_ALLOCATOR": "jemalloc"})


def test_restart_leaves_a_bad_allocator_setting_to_the_config_error(monkeypatch):
    # the entry points restart before anything else; a bad FME_ALLOCATOR must
    # not fail there (it would be a bare traceback) but in configure_process,
    # which names the variable and the choices
    from fme.core.process_resources import configure_process, restart_with_huge_pages

    monkeypatch.setenv("FME_ALLOCATOR", "jemalloc")
    restart_with_huge_pages(argv=["python", "-c", "raise SystemExit(3)"])
    before = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="FME_ALLOCATOR.*tuned.*system"):
            configure_process()
    finally:
        torch.set_num_threads(before)
