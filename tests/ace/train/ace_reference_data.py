"""Tiny data holding exactly the variables an ACE reference config names.

Fields are smooth waves around plausible values (surface pressure near
1000 hPa, positive water, temperatures near 250-290 K), 6-hourly, on an
8 x 16 grid with ACE's 8-layer hybrid coordinate (``ak_<i>``, ``bk_<i>``), so
the atmosphere corrector sees a well-posed column. Statistics files hold one
scalar per variable, as ACE's ``centering.nc`` / ``scaling-*.nc``.
"""

from pathlib import Path

import numpy as np
import xarray as xr

N_LAT, N_LON, N_LEVELS = 8, 16, 8
LAT = -90.0 + (np.arange(N_LAT) + 0.5) * 180.0 / N_LAT
LON = np.arange(N_LON) * 360.0 / N_LON


def config_names(config: dict) -> list[str]:
    """Every variable of a train config's stepper (inputs and outputs)."""
    step = config["stepper"]["step"]["config"]
    return sorted(set(step["in_names"]) | set(step["out_names"]))


def _base_and_amplitude(name: str) -> tuple[float, float]:
    if name == "PRESsfc":
        return 1.0e5, 500.0
    if name == "PRMSL":
        return 1.01e5, 500.0
    if name.startswith("specific_total_water") or name == "Q2m":
        return 5.0e-3, 2.0e-3
    if "temperature" in name or name.startswith("TMP"):
        return 270.0, 10.0
    if name.endswith("fraction"):
        return 0.3, 0.2
    if name == "HGTsfc":
        return 500.0, 400.0
    if name == "h500":
        return 5.5e4, 500.0
    if name == "global_mean_co2":
        return 4.0e-4, 0.0
    if name in ("PRATEsfc", "total_frozen_precipitation_rate"):
        return 3.0e-5, 2.0e-5
    if name == "tendency_of_total_water_path_due_to_advection":
        return 0.0, 1.0e-5
    if name.endswith(("sfc", "toa")):  # radiative and turbulent fluxes
        return 200.0, 80.0
    return 0.0, 5.0  # winds and stresses


def _fields(names: list[str], times: np.ndarray, seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    hours = (times - np.datetime64("1990-01-01", "ns")) / np.timedelta64(1, "h")
    lat_r, lon_r = np.deg2rad(LAT), np.deg2rad(LON)
    data = {}
    for name in names:
        base, amplitude = _base_and_amplitude(name)
        phase, k = rng.uniform(0, 2 * np.pi), rng.integers(1, 4)
        wave = np.cos(lat_r)[None, :, None] * np.cos(
            k * lon_r[None, None, :] - 2 * np.pi * hours[:, None, None] / 240.0 + phase
        )
        noise = 0.05 * rng.standard_normal((len(times), N_LAT, N_LON))
        values = base + amplitude * (0.8 * wave + noise)
        data[name] = (("time", "lat", "lon"), values.astype(np.float32))
    eta = np.linspace(0.0, 1.0, N_LEVELS + 1)
    ak = 100.0 * (1.0 - eta) + 20000.0 * eta * (1.0 - eta)
    for i in range(N_LEVELS + 1):
        data[f"ak_{i}"] = ((), ak[i])
        data[f"bk_{i}"] = ((), eta[i] ** 2)
    return xr.Dataset(
        data,
        coords={
            "time": times,
            "lat": ("lat", LAT, {"units": "degrees_north"}),
            "lon": ("lon", LON, {"units": "degrees_east"}),
        },
    )


def six_hourly(start: str, n_times: int) -> np.ndarray:
    """``n_times`` 6-hourly ``datetime64[ns]`` times from ``start``."""
    return np.datetime64(start, "ns") + np.arange(n_times) * np.timedelta64(6, "h")


def write_data(
    path: Path, names: list[str], times: np.ndarray, *, engine: str, seed: int = 0
) -> xr.Dataset:
    """The variables at ``times`` as a netCDF file or a zarr store at ``path``."""
    ds = _fields(names, times, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "zarr":
        ds.to_zarr(path, zarr_format=3, consolidated=True)
    else:
        ds.to_netcdf(path)
    return ds


def write_stats(directory: Path, ds: xr.Dataset, names: list[str]) -> dict[str, Path]:
    """``centering.nc``, ``scaling-full-field.nc``, ``scaling-residual.nc``, ``time-mean.nc``."""
    directory.mkdir(parents=True, exist_ok=True)
    means = xr.Dataset({n: float(ds[n].mean()) for n in names})
    stds = xr.Dataset({n: max(float(ds[n].std()), 1e-6) for n in names})
    diffs = ds[names].diff("time")
    residual = xr.Dataset({n: max(float(diffs[n].std()), 1e-6) for n in names})
    paths = {
        "centering": directory / "centering.nc",
        "full_field": directory / "scaling-full-field.nc",
        "residual": directory / "scaling-residual.nc",
        "time_mean": directory / "time-mean.nc",
    }
    means.to_netcdf(paths["centering"])
    stds.to_netcdf(paths["full_field"])
    residual.to_netcdf(paths["residual"])
    ds[names].mean("time").to_netcdf(paths["time_mean"])
    return paths
