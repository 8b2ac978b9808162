"""Files written with ``checksum_encoding``: checksums on, one time per chunk."""

import netCDF4
import numpy as np
import xarray as xr

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.core.netcdf_files import (
    READ_CHUNK_CACHE_BYTES,
    checksum_encoding,
    open_dataset,
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
