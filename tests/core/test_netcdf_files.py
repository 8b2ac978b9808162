"""Files written with ``checksum_encoding`` (checksums on, one time per chunk)
and windows of times read back with ``TimeWindowReader``."""

import netCDF4
import numpy as np
import pytest
import xarray as xr

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.core.netcdf_files import (
    READ_CHUNK_CACHE_BYTES,
    TimeWindowReader,
    checksum_encoding,
    open_dataset,
    reads_raw_values,
)


def test_time_series_are_stored_one_time_per_chunk_with_checksums(tmp_path):
    ds = xr.Dataset(
        {
            "field": (("time", "lat", "lon"), np.zeros((50, 4, 8), np.float32)),
            "static": (("lat", "lon"), np.ones((4, 8), np.float32)),
        },
        coords={"time": np.arange(50), "lat": np.arange(4.0), "lon": np.arange(8.0)},
    )
    path = tmp_path / "f.nc"
    ds.to_netcdf(path, encoding=checksum_encoding(ds))
    with netCDF4.Dataset(path) as nc:
        assert nc["field"].chunking() == [1, 4, 8]
        assert nc["field"].filters()["fletcher32"] is True
        assert nc["static"].filters()["fletcher32"] is True
    with xr.open_dataset(path) as back:
        np.testing.assert_array_equal(back["static"].values, ds["static"].values)


def test_the_ace_format_example_reads_one_time_per_chunk(tmp_path):
    """A streaming reader of one time must not decompress hundreds of them."""
    paths = write_ace_format_dataset(tmp_path, n_times=40)
    (data_file,) = sorted(paths.data_dir.glob("*.nc"))
    with netCDF4.Dataset(data_file) as nc:
        variable = nc["PRESsfc"]
        assert variable.chunking() == [1, *variable.shape[1:]]


def test_files_are_read_with_a_bounded_chunk_cache(tmp_path):
    """A long forward-only read must not keep netCDF's 64 MiB per variable."""
    netCDF4.set_chunk_cache(64 << 20)
    path = tmp_path / "f.nc"
    xr.Dataset({"x": (("time",), np.zeros(3))}).to_netcdf(path)
    with open_dataset(path) as ds:
        assert ds["x"].size == 3
        assert netCDF4.get_chunk_cache()[0] == READ_CHUNK_CACHE_BYTES == 4 << 20


N_TIMES = 9


def _write_variable_kinds(path):
    """One variable of every kind a data file may hold, raw or transformed on read."""
    rng = np.random.default_rng(0)
    with netCDF4.Dataset(path, "w") as nc:
        for dim, size in (("time", None), ("level", 2), ("lat", 3), ("lon", 4)):
            nc.createDimension(dim, size)
        field = ("time", "lat", "lon")
        kinds = {
            "chunked_f4": dict(datatype="f4", chunksizes=(1, 3, 4), fletcher32=True),
            "contiguous_f8": dict(datatype="f8", contiguous=False),
            "with_fill_f4": dict(datatype="f4", fill_value=-9.0),
            "big_endian_f4": dict(datatype=np.dtype(">f4"), endian="big"),
            "packed_i2": dict(datatype="i2"),
            "scaled_f4": dict(datatype="f4"),
        }
        for name, kwargs in kinds.items():
            variable = nc.createVariable(name, dimensions=field, **kwargs)
            variable[:] = rng.normal(size=(N_TIMES, 3, 4)) * 10
        nc["with_fill_f4"][2, 1, 1] = -9.0  # a stored fill value stays a value
        nc["packed_i2"].setncatts({"scale_factor": 0.5, "add_offset": 100.0})
        nc["packed_i2"][:] = rng.normal(size=(N_TIMES, 3, 4)) * 10 + 100
        nc["scaled_f4"].setncatts({"scale_factor": 2.0, "add_offset": 1.0})
        levels = nc.createVariable("levels_f4", "f4", ("time", "level", "lat", "lon"))
        levels[:] = rng.normal(size=(N_TIMES, 2, 3, 4))


@pytest.mark.parametrize(
    "name, raw",
    [
        ("chunked_f4", True),
        ("contiguous_f8", True),
        ("with_fill_f4", True),
        ("levels_f4", True),
        ("big_endian_f4", False),  # netCDF4 swaps the bytes: slicing does that
        ("packed_i2", False),  # unpacked by netCDF4's slicing
        ("scaled_f4", False),  # scaled by netCDF4's slicing
    ],
)
def test_time_windows_equal_netcdf4_slicing(tmp_path, name, raw):
    path = tmp_path / "kinds.nc"
    _write_variable_kinds(path)
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        variable = nc[name]
        assert reads_raw_values(variable) is raw
        read_window = TimeWindowReader(variable)
        for start, stop in ((0, 1), (3, 6), (N_TIMES - 2, N_TIMES), (0, N_TIMES)):
            window = read_window(start, stop)
            expected = variable[start:stop]
            assert window.dtype == expected.dtype
            assert window.shape == (stop - start, *variable.shape[1:])
            np.testing.assert_array_equal(window, expected)
        if name == "packed_i2":  # unpacked, not the stored integers
            assert window.dtype.kind == "f" and abs(window.mean() - 100) < 5
        if name == "with_fill_f4":
            assert read_window(2, 3)[0, 1, 1] == -9.0


def test_masked_handles_are_read_by_slicing(tmp_path):
    """With masking on (netCDF4's default), fill values must come back masked."""
    path = tmp_path / "kinds.nc"
    _write_variable_kinds(path)
    with netCDF4.Dataset(path) as nc:
        variable = nc["with_fill_f4"]
        assert not reads_raw_values(variable)
        window = TimeWindowReader(variable)(2, 3)
        assert np.ma.is_masked(window) and window.mask[0, 1, 1]


def test_a_corrupt_chunk_fails_the_window_that_holds_it(tmp_path):
    path = tmp_path / "kinds.nc"
    _write_variable_kinds(path)
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        stored = nc["chunked_f4"][4].tobytes()
    raw = bytearray(path.read_bytes())
    offset = raw.find(stored)
    assert offset > 0  # uncompressed: the chunk's bytes are in the file
    raw[offset + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with netCDF4.Dataset(path) as nc:
        nc.set_auto_mask(False)
        variable = nc["chunked_f4"]
        assert reads_raw_values(variable)
        read_window = TimeWindowReader(variable)
        read_window(0, 4)  # the chunks before it are intact
        with pytest.raises((RuntimeError, OSError)):
            read_window(3, 6)
