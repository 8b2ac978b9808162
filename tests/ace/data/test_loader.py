import numpy as np
import pytest
import torch

from fme.ace.data.ace_format_fixture import AceFormatPaths, write_ace_format_dataset
from fme.ace.data.batch import BatchData
from fme.ace.data.loader import (
    DataLoaderConfig,
    WindowBatchSampler,
    build_data_loader,
)
from fme.ace.data.netcdf_dataset import XarrayDataConfig

N_TIMESTEPS = 3


def sampler(n=23, *, batch=4, rank=0, world=1, shuffle=True, seed=5, **kwargs):
    return WindowBatchSampler(
        n,
        global_batch_size=batch,
        rank=rank,
        world_size=world,
        shuffle=shuffle,
        seed=seed,
        **kwargs,
    )


@pytest.mark.parametrize("world, batch", [(2, 4), (4, 8), (3, 6)])
def test_ranks_together_see_the_single_process_batches(world, batch):
    single = list(sampler(batch=batch))
    per_rank = [list(sampler(batch=batch, rank=r, world=world)) for r in range(world)]
    assert len(single) == 23 // batch
    for b, global_batch in enumerate(single):
        joined = [i for rank_batches in per_rank for i in rank_batches[b]]
        assert joined == global_batch
        assert all(len(rank_batches[b]) == batch // world for rank_batches in per_rank)
    flat = [i for global_batch in single for i in global_batch]
    assert len(set(flat)) == len(flat)  # no sample twice in an epoch


def test_global_batch_helper_matches_iteration():
    s = sampler(rank=1, world=2)
    s.set_epoch(2)
    single = sampler()
    single.set_epoch(2)
    for b, local in enumerate(s):
        assert local == s.global_batch(b)[2:]
        assert s.global_batch(b) == list(single)[b]


def test_epoch_and_seed_change_the_order_and_no_shuffle_keeps_it():
    s = sampler()
    epoch0 = list(s)
    assert list(s) == epoch0  # same epoch again: same order
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != epoch0
    s.set_epoch(0)
    assert list(s) == epoch0
    assert list(sampler(seed=6)) != epoch0
    ordered = list(sampler(shuffle=False))
    assert ordered == [list(range(b * 4, b * 4 + 4)) for b in range(5)]


@pytest.mark.parametrize("world", [1, 2])
def test_resume_yields_exactly_the_remaining_batches(world):
    for rank in range(world):
        s = sampler(rank=rank, world=world)
        s.set_epoch(3)
        full = list(s)
        s = sampler(rank=rank, world=world)
        s.set_epoch(3)
        iterator = iter(s)
        consumed = [next(iterator), next(iterator)]
        assert consumed == full[:2]
        state = s.state_dict()
        assert state == {"epoch": 3, "batches_done": 2}
        resumed = sampler(rank=rank, world=world)
        resumed.load_state_dict(state)
        resumed.set_epoch(3)  # the trainer's usual call keeps the position
        assert list(resumed) == full[2:]
        assert resumed.state_dict() == {"epoch": 3, "batches_done": 5}
        assert list(resumed) == full  # a finished epoch starts over
        resumed.set_epoch(4)
        assert resumed.state_dict() == {"epoch": 4, "batches_done": 0}


def test_batch_size_must_divide_over_processes():
    with pytest.raises(ValueError, match="divisible|multiple"):
        sampler(batch=5, world=2)
    with pytest.raises(ValueError, match="rank"):
        sampler(rank=2, world=2)


def test_bad_state_raises():
    with pytest.raises(ValueError, match="batches_done"):
        sampler().load_state_dict({"epoch": 0, "batches_done": 6})


def test_keep_last_partial_batch():
    s = sampler(10, shuffle=False, drop_last=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    ranks = [
        list(sampler(9, shuffle=False, drop_last=False, rank=r, world=2))
        for r in (0, 1)
    ]
    assert ranks[0] == [[0, 1], [4, 5], [8]]
    assert ranks[1] == [[2, 3], [6, 7]]  # empty share of the last batch skipped


def ace_data(tmp_path) -> AceFormatPaths:
    return write_ace_format_dataset(tmp_path, n_files=2, n_times=8)


def build(paths: AceFormatPaths, *, batch=4, workers=0, rank=0, world=1, **kwargs):
    config = DataLoaderConfig(
        dataset=XarrayDataConfig(data_path=str(paths.data_dir)),
        batch_size=batch,
        num_data_workers=workers,
    )
    return build_data_loader(
        config,
        names=paths.all_names,
        n_timesteps=N_TIMESTEPS,
        shuffle=True,
        rank=rank,
        world_size=world,
        seed=1,
        **kwargs,
    )


def assert_same_batches(a: list[BatchData], b: list[BatchData]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.time, y.time)
        assert x.data.keys() == y.data.keys()
        for name in x.data:
            torch.testing.assert_close(x.data[name], y.data[name], rtol=0, atol=0)


def test_loader_yields_batch_data(tmp_path):
    paths = ace_data(tmp_path)
    data = build(paths)
    # as in ACE, the two files continue each other: windows cross between them
    assert data.n_samples == 2 * 8 - N_TIMESTEPS + 1
    assert data.n_batches == data.n_samples // 4
    batches = list(data.loader)
    assert len(batches) == 3
    for batch in batches:
        assert isinstance(batch, BatchData)
        assert batch.time.shape == (4, N_TIMESTEPS)
        assert batch.time.dtype == np.dtype("datetime64[ns]")
        assert set(batch.data) == set(paths.all_names)
        for value in batch.data.values():
            assert value.shape == (4, N_TIMESTEPS, 8, 16)
            assert value.dtype == torch.float32
    assert data.dataset_info.img_shape == (8, 16)


def test_zero_and_two_workers_give_identical_batches(tmp_path):
    paths = ace_data(tmp_path)
    in_process = build(paths, workers=0)
    with_workers = build(paths, workers=2)
    for epoch in (0, 1):
        in_process.set_epoch(epoch)
        with_workers.set_epoch(epoch)
        assert_same_batches(list(in_process.loader), list(with_workers.loader))


def test_rank_loaders_split_each_global_batch(tmp_path):
    paths = ace_data(tmp_path)
    single = list(build(paths).loader)
    ranks = [list(build(paths, rank=r, world=2).loader) for r in (0, 1)]
    for b, batch in enumerate(single):
        first, second = ranks[0][b], ranks[1][b]
        assert first.batch_size == second.batch_size == 2
        np.testing.assert_array_equal(
            np.concatenate([first.time, second.time]), batch.time
        )
        for name, value in batch.data.items():
            joined = torch.cat([first.data[name], second.data[name]])
            torch.testing.assert_close(joined, value, rtol=0, atol=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resumes_after_delivered_batches(tmp_path, workers):
    paths = write_ace_format_dataset(tmp_path, n_files=2, n_times=12)
    reference = build(paths, batch=2)
    reference.set_epoch(1)
    full = list(reference.loader)
    data = build(paths, batch=2, workers=workers)
    data.set_epoch(1)
    consumed = []
    for batch in data.loader:
        consumed.append(batch)
        if len(consumed) == 3:
            break
    # workers prefetch ahead, but the position counts delivered batches only
    state = data.sampler.state_dict()
    assert state == {"epoch": 1, "batches_done": 3}
    resumed = build(paths, batch=2, workers=workers)
    resumed.sampler.load_state_dict(state)
    resumed.set_epoch(1)
    assert_same_batches(consumed + list(resumed.loader), full)


def test_too_few_samples_for_one_batch_raise(tmp_path):
    paths = write_ace_format_dataset(tmp_path, n_times=4)
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        build(paths, batch=4)


def test_config_validation():
    dataset = XarrayDataConfig(data_path="/x")
    with pytest.raises(ValueError, match="batch_size"):
        DataLoaderConfig(dataset=dataset, batch_size=0)
    with pytest.raises(ValueError, match="num_data_workers"):
        DataLoaderConfig(dataset=dataset, batch_size=1, num_data_workers=-1)
