import datetime
import json

import numpy as np
import torch
import xarray as xr

from fme.ace.data.ace_format_fixture import (
    hybrid_coefficients,
    write_ace_format_dataset,
)
from fme.ace.data.loader import DataLoaderConfig, build_data_loader
from fme.ace.data.netcdf_dataset import XarrayDataConfig


def test_loader_reads_fixture_with_vertical_coordinate(tmp_path):
    paths = write_ace_format_dataset(tmp_path, n_levels=3, n_times=6, n_files=2)
    assert paths.prognostic == [
        "PRESsfc",
        "air_temperature_0",
        "air_temperature_1",
        "air_temperature_2",
        "specific_total_water_0",
        "specific_total_water_1",
        "specific_total_water_2",
        "surface_temperature",
    ]
    assert paths.forcing == [
        "DSWRFtoa",
        "HGTsfc",
        "land_fraction",
        "ocean_fraction",
        "sea_ice_fraction",
    ]
    assert "PRATEsfc" in paths.diagnostic and "ULWRFtoa" in paths.diagnostic
    config = DataLoaderConfig(
        dataset=XarrayDataConfig(data_path=str(paths.data_dir)), batch_size=2
    )
    data = build_data_loader(
        config, names=paths.all_names, n_timesteps=2, shuffle=False
    )
    info = data.dataset_info
    assert info.vertical_coordinate is not None
    assert info.vertical_coordinate.n_levels == 3
    ak, bk = hybrid_coefficients(3)
    torch.testing.assert_close(
        info.vertical_coordinate.ak, torch.tensor(ak, dtype=torch.float32)
    )
    torch.testing.assert_close(
        info.vertical_coordinate.bk, torch.tensor(bk, dtype=torch.float32)
    )
    assert info.timestep == datetime.timedelta(hours=6)
    assert info.img_shape == (8, 16)
    assert torch.all(torch.diff(info.lat) > 0) and info.lon[0] == 0.0
    assert info.variable_metadata["PRESsfc"]["units"] == "Pa"
    # as in ACE, the two files continue each other in time: windows cross them
    assert data.n_samples == 2 * 6 - 2 + 1
    batch = next(iter(data.loader))
    ps = batch.data["PRESsfc"]
    assert 0.8e5 < ps.min() and ps.max() < 1.05e5  # lower over orography
    for k in range(3):
        assert torch.all(batch.data[f"specific_total_water_{k}"] > 0)
    pressure = info.vertical_coordinate.interface_pressure(ps)
    assert torch.all(torch.diff(pressure, dim=-1) > 0)  # top (i=0) to surface
    torch.testing.assert_close(pressure[..., -1], ps)
    # file 1 continues file 0's 6-hourly time axis
    second = xr.open_dataset(paths.data_dir / "data_001.nc")
    assert second.time.values[0] == np.datetime64("2000-01-02T12:00", "ns")


def test_stats_files_are_computed_from_the_data(tmp_path):
    paths = write_ace_format_dataset(tmp_path, n_times=5, n_files=2, seed=3)
    files = [xr.load_dataset(p) for p in sorted(paths.data_dir.glob("*.nc"))]
    means = xr.load_dataset(paths.means_path)
    stds = xr.load_dataset(paths.stds_path)
    residual = xr.load_dataset(paths.residual_stds_path)
    for name in paths.all_names:
        values = np.concatenate([f[name].values.astype(np.float64) for f in files])
        diffs = np.concatenate(
            [np.diff(f[name].values.astype(np.float64), axis=0) for f in files]
        )
        np.testing.assert_allclose(float(means[name]), values.mean(), rtol=1e-6)
        np.testing.assert_allclose(float(stds[name]), values.std(), rtol=1e-6)
        if diffs.std() > 0:
            np.testing.assert_allclose(float(residual[name]), diffs.std(), rtol=1e-6)
        else:  # time-constant surface fields
            assert name in {"HGTsfc", "land_fraction", "ocean_fraction"} | {
                "sea_ice_fraction"
            }
            assert float(residual[name]) == float(stds[name])
        assert float(stds[name]) > 0 and float(residual[name]) > 0


def test_seed_changes_the_fields(tmp_path):
    a = write_ace_format_dataset(tmp_path / "a", seed=0)
    b = write_ace_format_dataset(tmp_path / "b", seed=1)
    c = write_ace_format_dataset(tmp_path / "c", seed=0)

    def read(paths):
        ds = xr.load_dataset(paths.data_dir / "data_000.nc")
        return ds["air_temperature_0"].values

    np.testing.assert_array_equal(read(a), read(c))
    assert not np.array_equal(read(a), read(b))


def test_cli_writes_the_same_dataset(tmp_path):
    from fme.ace.data.ace_format_fixture import main

    main(
        ["--out", str(tmp_path / "cli"), "--n-lat", "4", "--n-lon", "8"]
        + ["--n-levels", "3", "--n-times", "5", "--seed", "2"]
    )
    direct = write_ace_format_dataset(
        tmp_path / "direct", n_lat=4, n_lon=8, n_levels=3, n_times=5, seed=2
    )
    a = xr.load_dataset(tmp_path / "cli" / "data" / "data_000.nc")
    b = xr.load_dataset(direct.data_dir / "data_000.nc")
    xr.testing.assert_identical(a, b)


def test_precipitation_is_zero_over_much_of_the_globe(tmp_path):
    paths = write_ace_format_dataset(tmp_path, n_lat=16, n_lon=32, n_times=8)
    ds = xr.load_dataset(paths.data_dir / "data_000.nc")
    dry = float((ds["PRATEsfc"] == 0).mean())
    assert 0.3 < dry < 0.95
    assert float(ds["PRATEsfc"].min()) == 0.0
    frozen, total = ds["total_frozen_precipitation_rate"], ds["PRATEsfc"]
    assert bool((frozen <= total).all()) and float(frozen.max()) > 0


def test_roles_file_partitions_the_written_variables(tmp_path):
    paths = write_ace_format_dataset(tmp_path, n_levels=2, n_times=3)
    roles = json.loads(paths.roles_path.read_text())
    assert paths.roles_path == tmp_path / "variable_roles.json"
    assert roles == {
        "prognostic": paths.prognostic,
        "forcing": paths.forcing,
        "diagnostic": paths.diagnostic,
    }
    with xr.open_dataset(paths.data_dir / "data_000.nc") as ds:
        in_time = {str(n) for n, v in ds.data_vars.items() if "time" in v.dims}
    listed = roles["prognostic"] + roles["forcing"] + roles["diagnostic"]
    assert len(listed) == len(set(listed))  # no variable has two roles
    assert set(listed) == in_time
