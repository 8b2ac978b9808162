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


def test_tuned_allocator_reuses_freed_tensors_instead_of_faulting_them_in():
    # In a fresh process: page faults of allocating, touching and freeing a
    # 64 MiB tensor, before and after the settings (glibc maps such blocks
    # afresh on every allocation by default).
    script = textwrap.dedent(
        """
        import resource, torch
        from fme.core.process_resources import apply_allocator_settings

        def faults_per_alloc():
            for _ in range(12):  # glibc settles after a few heap extensions
                torch.ones(16 << 20)
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                torch.ones(16 << 20)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 10

        before = faults_per_alloc()
        tuned = apply_allocator_settings({})
        print(tuned, before, faults_per_alloc())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "True":
        pytest.skip("the C library has no mallopt (not glibc)")
    before, after = float(out[1]), float(out[2])
    assert before > 10_000  # 16 Mi floats are 16k pages of 4 KiB
    assert after < 0.1 * before
