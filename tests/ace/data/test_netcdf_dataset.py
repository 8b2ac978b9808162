import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import fme.ace.data.netcdf_dataset as netcdf_dataset
from fme.ace.data.loader import DataLoaderConfig
from fme.ace.data.netcdf_dataset import (
    Slice,
    TimeSlice,
    XarrayDataConfig,
    XarrayDataset,
)
from fme.core.config_loading import ConfigError, from_dict_strict, to_dict

N_LAT, N_LON = 3, 4
LAT = np.array([-45.0, 0.0, 45.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])
START = np.datetime64("2001-03-01T00:00", "ns")
STEP = np.timedelta64(6, "h")


def _values(file_index: int, n_times: int, offset: float) -> np.ndarray:
    """Distinct, recognisable values: file * 1000 + time * 10 + point / 100."""
    t = np.arange(n_times)[:, None, None] * 10.0
    point = np.arange(N_LAT * N_LON).reshape(1, N_LAT, N_LON) / 100.0
    return (file_index * 1000.0 + t + point + offset).astype(np.float32)


def write_files(
    directory: Path,
    n_times: list[int],
    *,
    calendar: str = "proleptic_gregorian",
    extra: dict | None = None,
) -> list[Path]:
    """One file per entry of ``n_times``; file j starts 100 days after file j-1."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, n in enumerate(n_times):
        times = START + np.timedelta64(100 * j, "D") + np.arange(n) * STEP
        ds = xr.Dataset(
            {
                "a": (("time", "lat", "lon"), _values(j, n, 0.0), {"units": "K"}),
                "b": (
                    ("time", "lat", "lon"),
                    _values(j, n, 0.5),
                    {"units": "m/s", "long_name": "bee"},
                ),
                "mask": (("lat", "lon"), np.ones((N_LAT, N_LON), np.float32) * 7),
                **(extra or {}),
            },
            coords={"time": times, "lat": LAT, "lon": LON},
        )
        path = directory / f"file_{j}.nc"
        ds.to_netcdf(
            path,
            encoding={
                "time": {"units": "hours since 2000-01-01", "calendar": calendar}
            },
        )
        paths.append(path)
    return paths


def dataset(directory: Path, n_timesteps: int = 3, names=("a", "b"), **kwargs):
    config = XarrayDataConfig(data_path=str(directory), **kwargs)
    return XarrayDataset(config, names=list(names), n_timesteps=n_timesteps)


def test_windows_equal_file_slices_and_never_cross_files(tmp_path):
    n_times = [5, 7, 3]
    write_files(tmp_path, n_times)
    ds = dataset(tmp_path, n_timesteps=3)
    assert len(ds) == sum(n - 3 + 1 for n in n_times)
    k = 0
    for j, n in enumerate(n_times):
        file_values = _values(j, n, 0.0)
        for start in range(n - 3 + 1):
            data, times = ds[k]
            assert data["a"].dtype == torch.float32
            assert data["a"].shape == (3, N_LAT, N_LON)
            np.testing.assert_array_equal(
                data["a"].numpy(), file_values[start : start + 3]
            )
            np.testing.assert_array_equal(
                data["b"].numpy(), _values(j, n, 0.5)[start : start + 3]
            )
            expected = (
                START
                + np.timedelta64(100 * j, "D")
                + np.arange(start, start + 3) * STEP
            )
            np.testing.assert_array_equal(times, expected)
            assert times.dtype == np.dtype("datetime64[ns]")
            k += 1


def test_uncached_reads_equal_cached_reads(tmp_path, monkeypatch):
    write_files(tmp_path, [3, 4])
    cached = dataset(tmp_path, names=("a", "mask"))
    monkeypatch.setattr(netcdf_dataset, "CACHE_LIMIT_BYTES", 0)
    uncached = dataset(tmp_path, names=("a", "mask"))
    assert not uncached.store.in_memory and cached.store.in_memory
    for i in range(len(cached)):
        (d1, t1), (d2, t2) = cached[i], uncached[i]
        np.testing.assert_array_equal(t1, t2)
        for name in d1:
            torch.testing.assert_close(d1[name], d2[name], rtol=0, atol=0)


def test_streaming_config_equals_cached_and_survives_pickling(tmp_path):
    import pickle

    write_files(tmp_path, [3, 4])
    cached = dataset(tmp_path, names=("a", "mask"))
    streamed = dataset(tmp_path, names=("a", "mask"), cache_in_memory=False)
    assert not streamed.store.in_memory
    streamed[0]  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(streamed))  # as a spawned worker gets it
    assert clone.store._handles == {}
    for i in range(len(cached)):
        for other in (streamed, clone):
            (d1, t1), (d2, t2) = cached[i], other[i]
            np.testing.assert_array_equal(t1, t2)
            for name in d1:
                torch.testing.assert_close(d1[name], d2[name], rtol=0, atol=0)


@pytest.mark.parametrize("cache_in_memory", [True, False])
def test_a_sample_shares_its_values_with_no_later_read(tmp_path, cache_in_memory):
    """A streamed sample's tensors are its reads' own; cached ones are copies."""
    write_files(tmp_path, [5])
    ds = dataset(tmp_path, names=("a", "mask"), cache_in_memory=cache_in_memory)
    first, _ = ds[1]
    for values in first.values():
        values.fill_(-1.0)
    again, _ = ds[1]
    np.testing.assert_array_equal(again["a"].numpy(), _values(0, 5, 0.0)[1:4])
    assert torch.all(again["mask"] == 7.0)


def test_time_invariant_variable_is_broadcast(tmp_path):
    write_files(tmp_path, [4])
    data, _ = dataset(tmp_path, names=("a", "mask"))[1]
    assert data["mask"].shape == (3, N_LAT, N_LON)
    assert torch.all(data["mask"] == 7.0)


def test_dataset_info(tmp_path):
    extra = {
        "ak_0": ((), 10.0),
        "ak_1": ((), 5.0),
        "ak_2": ((), 0.0),
        "bk_0": ((), 0.0),
        "bk_1": ((), 0.5),
        "bk_2": ((), 1.0),
    }
    write_files(tmp_path / "with", [4], extra=extra)
    info = dataset(tmp_path / "with").dataset_info
    torch.testing.assert_close(info.lat, torch.tensor(LAT, dtype=torch.float32))
    torch.testing.assert_close(info.lon, torch.tensor(LON, dtype=torch.float32))
    assert info.timestep == datetime.timedelta(hours=6)
    assert info.variable_metadata == {
        "a": {"units": "K"},
        "b": {"units": "m/s", "long_name": "bee"},
    }
    vertical = info.vertical_coordinate
    assert vertical is not None and vertical.n_levels == 2
    torch.testing.assert_close(vertical.ak, torch.tensor([10.0, 5.0, 0.0]))
    torch.testing.assert_close(vertical.bk, torch.tensor([0.0, 0.5, 1.0]))
    write_files(tmp_path / "without", [4])
    assert dataset(tmp_path / "without").dataset_info.vertical_coordinate is None


def test_unpaired_hybrid_coefficients_raise(tmp_path):
    write_files(
        tmp_path, [4], extra={"ak_0": ((), 1.0), "bk_0": ((), 0.0), "ak_1": ((), 0.0)}
    )
    with pytest.raises(ValueError, match="do not pair up"):
        dataset(tmp_path)


def test_noleap_calendar_times_become_datetime64(tmp_path):
    write_files(tmp_path, [4], calendar="noleap")
    ds = dataset(tmp_path, n_timesteps=2)
    _, times = ds[1]
    np.testing.assert_array_equal(times, START + np.arange(1, 3) * STEP)
    assert ds.dataset_info.timestep == datetime.timedelta(hours=6)


def test_cftime_outside_datetime64_range_raises(tmp_path):
    ds = xr.Dataset(
        {"a": (("time", "lat", "lon"), _values(0, 3, 0.0))},
        coords={"time": [0.0, 6.0, 12.0], "lat": LAT, "lon": LON},
    )
    ds.time.attrs.update(units="hours since 0001-01-01", calendar="noleap")
    ds.to_netcdf(tmp_path / "early.nc")
    with pytest.raises(ValueError, match="0001-01-01.* outside the datetime64"):
        dataset(tmp_path, names=("a",), n_timesteps=2)


def test_index_subset(tmp_path):
    write_files(tmp_path, [6, 6])
    full = dataset(tmp_path, n_timesteps=2)
    sub = dataset(tmp_path, n_timesteps=2, subset=Slice(start=1, stop=9, step=3))
    expected = list(range(len(full)))[1:9:3]
    assert len(sub) == len(expected) == 3
    for i, j in enumerate(expected):
        np.testing.assert_array_equal(sub[i][1], full[j][1])
        torch.testing.assert_close(sub[i][0]["a"], full[j][0]["a"])


def test_time_subset_is_inclusive_and_steps(tmp_path):
    write_files(tmp_path, [6, 6])
    full = dataset(tmp_path, n_timesteps=2)
    starts = full.sample_start_times
    lo, hi = START + STEP, START + np.timedelta64(100, "D") + 2 * STEP
    subset = TimeSlice(start_time=str(lo), stop_time=str(hi), step=2)
    sub = dataset(tmp_path, n_timesteps=2, subset=subset)
    expected = np.flatnonzero((starts >= lo) & (starts <= hi))[::2]
    np.testing.assert_array_equal(sub.sample_start_times, starts[expected])
    assert sub.sample_start_times[0] == lo  # inclusive start
    only_second_file = dataset(
        tmp_path, n_timesteps=2, subset=TimeSlice(start_time="2001-05-01")
    )
    assert len(only_second_file) == 5


def test_empty_subset_and_mismatched_grids_raise(tmp_path):
    write_files(tmp_path, [4])
    with pytest.raises(ValueError, match="selects none"):
        dataset(tmp_path, subset=TimeSlice(start_time="2030-01-01"))
    other = xr.load_dataset(tmp_path / "file_0.nc").assign_coords(lat=LAT + 1.0)
    other.to_netcdf(tmp_path / "file_1.nc")
    with pytest.raises(ValueError, match="different 'lat' coordinate"):
        dataset(tmp_path)


def test_subset_validation():
    with pytest.raises(ValueError, match="subset.step"):
        Slice(step=0)
    with pytest.raises(ValueError, match="subset.start_time"):
        TimeSlice(start_time="yesterday")


def test_config_loads_strictly_with_either_subset():
    base = {"dataset": {"data_path": "/x"}, "batch_size": 4}
    config = from_dict_strict(DataLoaderConfig, base)
    assert config.dataset.subset == Slice() and config.num_data_workers == 0
    by_index = {
        **base,
        "dataset": {"data_path": "/x", "subset": {"start": 2, "step": 2}},
    }
    assert from_dict_strict(DataLoaderConfig, by_index).dataset.subset == Slice(
        start=2, step=2
    )
    by_time = {
        **base,
        "dataset": {"data_path": "/x", "subset": {"start_time": "2000-01-01"}},
    }
    loaded = from_dict_strict(DataLoaderConfig, by_time).dataset.subset
    assert loaded == TimeSlice(start_time="2000-01-01")
    with pytest.raises(ConfigError, match="unknown_key"):
        from_dict_strict(DataLoaderConfig, {**base, "unknown_key": 1})


def test_prefetch_factor_without_data_workers_is_refused_as_in_ace():
    """torch's DataLoader refuses it without workers, so ACE's config does."""
    base = {"dataset": {"data_path": "/x"}, "batch_size": 4, "prefetch_factor": 4}
    with pytest.raises(
        ConfigError, match="prefetch_factor 4 needs data workers.*num_data_workers"
    ):
        from_dict_strict(DataLoaderConfig, {**base, "num_data_workers": 0})
    config = from_dict_strict(DataLoaderConfig, {**base, "num_data_workers": 2})
    assert (config.num_data_workers, config.prefetch_factor) == (2, 4)


@pytest.mark.parametrize(
    "subset", [Slice(), Slice(start=1, stop=5), TimeSlice(), TimeSlice(step=3)]
)
def test_config_round_trips_through_a_dict(subset):
    config = DataLoaderConfig(
        dataset=XarrayDataConfig(data_path="/x", subset=subset, allow_nans=True),
        batch_size=8,
        num_data_workers=2,
    )
    assert from_dict_strict(DataLoaderConfig, to_dict(config)) == config


def test_missing_path_and_unmatched_pattern_raise(tmp_path):
    with pytest.raises(ValueError, match="not an existing directory"):
        dataset(tmp_path / "nowhere")
    write_files(tmp_path, [4])
    with pytest.raises(ValueError, match=r"no files match file_pattern '\*.zarr'"):
        dataset(tmp_path, file_pattern="*.zarr")


def test_missing_variable_lists_available(tmp_path):
    write_files(tmp_path, [4])
    with pytest.raises(ValueError, match=r"\['c'\] are not in .*'a', 'b', 'mask'"):
        dataset(tmp_path, names=("a", "c"))


def test_nan_raises_unless_allowed(tmp_path, monkeypatch):
    nan_values = _values(0, 4, 0.0)
    nan_values[2, 1, 1] = np.nan
    extra = {"bad": (("time", "lat", "lon"), nan_values)}
    paths = write_files(tmp_path, [4], extra=extra)
    with pytest.raises(ValueError, match=f"'bad' in {paths[0]} contains NaN"):
        dataset(tmp_path, names=("a", "bad"))
    allowed = dataset(tmp_path, names=("a", "bad"), allow_nans=True)
    assert torch.isnan(allowed[0][0]["bad"]).sum() == 1
    monkeypatch.setattr(netcdf_dataset, "CACHE_LIMIT_BYTES", 0)
    lazy = dataset(tmp_path, names=("a", "bad"), n_timesteps=2)
    lazy[0]  # times 0-1 are clean
    with pytest.raises(ValueError, match="contains NaN"):
        lazy[1]


def test_too_few_times_raise(tmp_path):
    write_files(tmp_path, [5, 2])
    with pytest.raises(ValueError, match="file_1.nc has 2 times .* n_timesteps=3"):
        dataset(tmp_path, n_timesteps=3)


def test_irregular_times_raise(tmp_path):
    write_files(tmp_path, [4])
    times = START + np.array([0, 6, 12, 24]).astype("timedelta64[h]")
    ds = xr.Dataset(
        {
            "a": (("time", "lat", "lon"), _values(0, 4, 0.0)),
            "b": (("time", "lat", "lon"), _values(0, 4, 0.0)),
        },
        coords={"time": times, "lat": LAT, "lon": LON},
    )
    ds.to_netcdf(tmp_path / "file_9.nc")
    with pytest.raises(ValueError, match="not regularly spaced"):
        dataset(tmp_path)


def test_reads_generated_shallow_water_data(tmp_path):
    from fme.ace.data.shallow_water import generate_shallow_water_dataset

    out = generate_shallow_water_dataset(tmp_path / "sw", preset="tiny", seed=0)
    ds = dataset(out / "train", n_timesteps=4, names=("geopotential", "tracer"))
    assert len(ds) == 2 * (20 - 4 + 1)
    reference = xr.load_dataset(out / "train" / "trajectory_001.nc")
    data, times = ds[17 + 5]  # second file, window starting at time 5
    np.testing.assert_array_equal(
        data["tracer"].numpy(), reference["tracer"].values[5:9]
    )
    np.testing.assert_array_equal(times, reference.time.values[5:9])
    info = ds.dataset_info
    assert info.img_shape == (8, 16) and info.timestep == datetime.timedelta(hours=6)
    assert info.variable_metadata["geopotential"]["units"] == "m^2/s^2"


@pytest.mark.parametrize("cached", [True, False])
def test_infinite_values_raise_naming_file_variable_and_time(
    tmp_path, monkeypatch, cached
):
    values = _values(0, 4, 0.0)
    values[2, 1, 1] = np.inf
    paths = write_files(tmp_path, [4], extra={"bad": (("time", "lat", "lon"), values)})
    if not cached:
        monkeypatch.setattr(netcdf_dataset, "CACHE_LIMIT_BYTES", 0)
    message = rf"'bad' in {paths[0]} contains inf at time index 2 \(2001-03-01T12"
    # NaNs may be allowed (masked values); infinities never are
    for allow_nans in (False, True):
        with pytest.raises(ValueError, match=message):
            ds = dataset(tmp_path, names=("a", "bad"), allow_nans=allow_nans)
            [ds[i] for i in range(len(ds))]


def test_nan_message_names_the_time_index(tmp_path):
    values = _values(0, 4, 0.0)
    values[3, 0, 0] = np.nan
    paths = write_files(tmp_path, [4], extra={"bad": (("time", "lat", "lon"), values)})
    with pytest.raises(ValueError, match=f"'bad' in {paths[0]} contains NaN at time "):
        dataset(tmp_path, names=("a", "bad"))


@pytest.mark.parametrize(
    "corrupt, what",
    [
        (lambda b: b"", "is empty"),
        (lambda b: b[: len(b) // 3], "cannot be read as netCDF"),
        (lambda b: b"garbage" * 100, "cannot be read as netCDF"),
    ],
)
def test_empty_truncated_or_garbage_data_file_is_named(tmp_path, corrupt, what):
    paths = write_files(tmp_path, [4, 4])
    bad = paths[1]
    bad.write_bytes(corrupt(bad.read_bytes()))
    with pytest.raises(ValueError, match=f"{bad}.*{what}|{what}.*{bad}") as info:
        dataset(tmp_path)
    assert "\n" not in str(info.value)
