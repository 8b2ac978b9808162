"""ACE's dataset forms: zarr stores, concat, merge, time subsets, repeats."""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fme.ace.data.combined import (
    ConcatDatasetConfig,
    MergeDatasetConfig,
    build_dataset,
)
from fme.ace.data.loader import DataLoaderConfig
from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset
from fme.core.config_loading import ConfigError, from_dict_strict

LAT = np.array([-45.0, 0.0, 45.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])
START = np.datetime64("1995-12-30T00:00", "ns")
STEP = np.timedelta64(6, "h")


def _field(n_times: int, offset: float) -> np.ndarray:
    """Value = offset + time index (recognisable per time)."""
    values = np.arange(n_times, dtype=np.float32)[:, None, None] + offset
    return np.broadcast_to(values, (n_times, 3, 4)).copy()


def _dataset(n_times: int, names=("a", "b"), lat=LAT, first=0) -> xr.Dataset:
    times = START + (first + np.arange(n_times)) * STEP
    return xr.Dataset(
        {
            name: (("time", "lat", "lon"), _field(n_times, first + 100.0 * i))
            for i, name in enumerate(names)
        },
        coords={"time": times, "lat": lat, "lon": LON},
    )


def write_zarr(directory: Path, n_times: int, **kwargs) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "data.zarr"
    ds = _dataset(n_times, **kwargs)
    encoding = {name: {"chunks": (5, 3, 4)} for name in ds.data_vars}
    ds.to_zarr(path, zarr_format=3, encoding=encoding, consolidated=False)
    return path


def write_netcdf(directory: Path, n_times: int, n_files: int = 1, **kwargs) -> None:
    """``n_files`` files continuing each other in time."""
    directory.mkdir(parents=True, exist_ok=True)
    for j in range(n_files):
        _dataset(n_times, first=j * n_times, **kwargs).to_netcdf(
            directory / f"part_{j}.nc"
        )


def _xarray(directory, **kwargs) -> XarrayDataConfig:
    return XarrayDataConfig(data_path=str(directory), **kwargs)


def test_zarr_store_reads_the_same_windows_as_netcdf(tmp_path):
    write_zarr(tmp_path / "z", 12)
    write_netcdf(tmp_path / "n", 6, n_files=2)  # the same 12 times in two files
    for cache in (True, False):
        zarr_data = XarrayDataset(
            _xarray(
                tmp_path / "z",
                engine="zarr",
                file_pattern="data.zarr",
                cache_in_memory=cache,
            ),
            names=["a", "b"],
            n_timesteps=3,
        )
        nc_data = XarrayDataset(
            _xarray(tmp_path / "n"), names=["a", "b"], n_timesteps=3
        )
        assert len(zarr_data) == len(nc_data) == 10
        for i in range(10):
            (z, zt), (n, nt) = zarr_data[i], nc_data[i]
            np.testing.assert_array_equal(zt, nt)
            np.testing.assert_array_equal(z["a"][:, 0, 0].numpy(), [i, i + 1, i + 2])
            for name in ("a", "b"):
                torch.testing.assert_close(z[name], n[name], rtol=0, atol=0)


def test_zarr_needs_a_file_pattern(tmp_path):
    with pytest.raises(ValueError, match="file_pattern to the zarr store"):
        _xarray(tmp_path, engine="zarr")
    with pytest.raises(ValueError, match="engine 'netcdf' is unknown"):
        _xarray(tmp_path, engine="netcdf")


def test_time_subset_stop_time_covers_the_whole_day(tmp_path):
    write_zarr(tmp_path, 16)  # 1995-12-30T00 .. 1996-01-02T18, 6-hourly
    config = from_dict_strict(
        XarrayDataConfig,
        {
            "data_path": str(tmp_path),
            "file_pattern": "data.zarr",
            "engine": "zarr",
            "subset": {"start_time": "1995-12-31", "stop_time": "1995-12-31"},
        },
    )
    data = XarrayDataset(config, names=["a"], n_timesteps=2)
    # every window starting on 31 December, including 18:00 (as xarray's sel)
    assert [str(t)[:13] for t in data.sample_start_times] == [
        "1995-12-31T00",
        "1995-12-31T06",
        "1995-12-31T12",
        "1995-12-31T18",
    ]


def test_concat_of_time_subsets_of_one_store(tmp_path):
    write_zarr(tmp_path, 16)
    store = {"data_path": str(tmp_path), "file_pattern": "data.zarr", "engine": "zarr"}
    loader = from_dict_strict(
        DataLoaderConfig,
        {
            "batch_size": 2,
            "num_data_workers": 1,
            "prefetch_factor": 2,
            "dataset": {
                "concat": [
                    {**store, "subset": {"stop_time": "1995-12-30"}},
                    {**store, "subset": {"start_time": "1996-01-02T06:00"}},
                ]
            },
        },
    )
    assert isinstance(loader.dataset, ConcatDatasetConfig)
    data = build_dataset(loader.dataset, names=["a"], n_timesteps=2)
    # 4 windows start on 30 Dec; from 2 Jan 06:00 windows start at 13 and 14
    assert len(data) == 6
    firsts = [int(data[i][0]["a"][0, 0, 0]) for i in range(6)]
    assert firsts == [0, 1, 2, 3, 13, 14]


def test_merge_takes_each_variable_from_the_first_holder(tmp_path):
    write_netcdf(tmp_path / "one", 8, names=("a", "b"))
    write_netcdf(tmp_path / "two", 8, names=("b", "c"))
    config = from_dict_strict(
        MergeDatasetConfig,
        {
            "merge": [
                {"data_path": str(tmp_path / "one")},
                {"data_path": str(tmp_path / "two")},
            ]
        },
    )
    data = build_dataset(config, names=["a", "b", "c"], n_timesteps=2)
    sample, _ = data[3]
    assert float(sample["a"][0, 0, 0]) == 3.0
    assert float(sample["b"][0, 0, 0]) == 103.0  # from "one", where b = 100 + t
    assert float(sample["c"][0, 0, 0]) == 103.0  # from "two", where c = 100 + t
    with pytest.raises(ValueError, match=r"\['d'\] are in none of the merged"):
        build_dataset(config, names=["a", "d"], n_timesteps=2)


def test_merge_refuses_other_grids_and_times(tmp_path):
    write_netcdf(tmp_path / "one", 8, names=("a",))
    write_netcdf(tmp_path / "grid", 8, names=("b",), lat=LAT + 1.0)
    write_netcdf(tmp_path / "short", 6, names=("c",))
    for other, match in (("grid", "different lat grid"), ("short", "same times")):
        config = MergeDatasetConfig(
            merge=[_xarray(tmp_path / "one"), _xarray(tmp_path / other)]
        )
        names = ["a", {"grid": "b", "short": "c"}[other]]
        with pytest.raises(ValueError, match=match):
            build_dataset(config, names=names, n_timesteps=2)


def test_concat_refuses_another_grid(tmp_path):
    write_netcdf(tmp_path / "one", 8)
    write_netcdf(tmp_path / "two", 8, lat=LAT + 1.0)
    config = ConcatDatasetConfig(
        concat=[_xarray(tmp_path / "one"), _xarray(tmp_path / "two")]
    )
    with pytest.raises(ValueError, match=r"two/\*.nc has a different lat grid"):
        build_dataset(config, names=["a"], n_timesteps=2)


def test_n_repeats_continues_the_time_axis(tmp_path):
    write_netcdf(tmp_path, 4)
    data = XarrayDataset(_xarray(tmp_path, n_repeats=3), names=["a"], n_timesteps=2)
    assert len(data) == 3 * 4 - 1
    values, times = data[3]  # times 3 and 4: the end of pass 1, start of pass 2
    np.testing.assert_array_equal(values["a"][:, 0, 0].numpy(), [3.0, 0.0])
    np.testing.assert_array_equal(times, START + np.array([3, 4]) * STEP)


def test_window_longer_than_the_store_is_refused_with_path(tmp_path):
    write_zarr(tmp_path, 4)
    config = _xarray(tmp_path, engine="zarr", file_pattern="data.zarr")
    with pytest.raises(
        ValueError, match=r"data.zarr has 4 times, but a sample needs n_timesteps=6"
    ):
        XarrayDataset(config, names=["a"], n_timesteps=6)


def test_subset_outside_the_data_is_refused(tmp_path):
    write_netcdf(tmp_path, 8)
    config = _xarray(tmp_path, subset={"start_time": "2001-01-01"})
    config = from_dict_strict(
        XarrayDataConfig, {"data_path": str(tmp_path), "subset": {"start_time": "2001"}}
    )
    with pytest.raises(ValueError, match="selects none of the 7 samples"):
        XarrayDataset(config, names=["a"], n_timesteps=2)


def test_dataset_forms_are_told_apart_strictly(tmp_path):
    with pytest.raises(ConfigError, match="match none of the allowed forms"):
        from_dict_strict(
            DataLoaderConfig,
            {"batch_size": 1, "dataset": {"concat": [], "data_path": "x"}},
        )
    with pytest.raises(ConfigError, match="not supported here: isel"):
        from_dict_strict(
            DataLoaderConfig,
            {"batch_size": 1, "dataset": {"data_path": "x", "isel": {"lev": 0}}},
        )


def test_unreadable_zarr_store_and_corrupt_chunk_are_named(tmp_path):
    path = write_zarr(tmp_path, 12)
    config = XarrayDataConfig(
        data_path=str(tmp_path),
        engine="zarr",
        file_pattern="data.zarr",
        cache_in_memory=False,
    )
    # a chunk overwritten with garbage: the read names the store and times
    chunk = next(p for p in (path / "a").rglob("*") if p.is_file() and p.stem != "zarr")
    chunk.write_bytes(b"garbage" * 10)
    data = XarrayDataset(config, names=["a", "b"], n_timesteps=3)
    with pytest.raises(ValueError, match=rf"'a' in '{path}' cannot be read at times"):
        [data[i] for i in range(len(data))]
    # the store's metadata gone: opening names the store
    (path / "zarr.json").unlink()
    with pytest.raises(ValueError, match=f"zarr store '{path}' cannot be read"):
        XarrayDataset(config, names=["a", "b"], n_timesteps=3)


def test_merge_accepts_grids_equal_within_ace_tolerance(tmp_path):
    # ACE compares merged grids with torch.allclose (rtol 1e-5, atol 1e-8):
    # coordinates written in another precision are one grid
    write_netcdf(tmp_path / "one", 8, names=("a",))
    write_netcdf(tmp_path / "two", 8, names=("b",), lat=LAT * (1 + 1e-6))
    config = MergeDatasetConfig(
        merge=[_xarray(tmp_path / "one"), _xarray(tmp_path / "two")]
    )
    sample, _ = build_dataset(config, names=["a", "b"], n_timesteps=2)[2]
    assert float(sample["b"][0, 0, 0]) == 2.0  # the first (only) name: b = t


def test_merge_grid_clash_names_both_datasets_and_the_fix(tmp_path):
    write_netcdf(tmp_path / "one", 8, names=("a",))
    write_netcdf(tmp_path / "two", 8, names=("b",), lat=LAT + 1e-3)
    config = MergeDatasetConfig(
        merge=[_xarray(tmp_path / "one"), _xarray(tmp_path / "two")]
    )
    with pytest.raises(ValueError) as err:
        build_dataset(config, names=["a", "b"], n_timesteps=2)
    message = str(err.value)
    assert "two/*.nc has a different lat grid" in message
    assert "one/*.nc" in message and "regrid" in message


def test_merge_duplicate_variable_is_read_from_the_first_holder_as_in_ace(
    tmp_path, caplog
):
    write_netcdf(tmp_path / "one", 8, names=("a", "b"))
    write_netcdf(tmp_path / "two", 8, names=("c", "b"))  # b = 100 + t in both
    config = MergeDatasetConfig(
        merge=[_xarray(tmp_path / "one"), _xarray(tmp_path / "two")]
    )
    with caplog.at_level("WARNING"):
        sample, _ = build_dataset(config, names=["a", "b", "c"], n_timesteps=2)[1]
    assert float(sample["b"][0, 0, 0]) == 101.0
    (record,) = [r for r in caplog.records if "also holds" in r.getMessage()]
    text = record.getMessage()
    assert "two/*.nc also holds ['b']" in text and "read from" in text
    assert "one/*.nc" in text
