"""A tiny synthetic dataset with ACE's variable names, for tests and benchmarks.

The fields are smooth, random-phase patterns with plausible magnitudes, not a
physical simulation; what matters is the layout: ACE names (``PRESsfc``,
``air_temperature_<k>``, ``specific_total_water_<k>``, ``PRATEsfc``,
``DSWRFtoa``, ``surface_temperature``), the hybrid vertical coordinate as 0-d
``ak_<i>``/``bk_<i>`` variables (``i = 0`` at the model top, ``bk = 1`` at the
surface), ascending latitudes, longitudes from 0 and a 6-hourly CF time axis,
plus ACE's ``centering.nc`` / ``scaling-full-field.nc`` /
``scaling-residual.nc`` statistics computed from the data.
"""

import dataclasses
from pathlib import Path

import numpy as np
import xarray as xr

from fme.core.netcdf_files import checksum_encoding

_TIME_UNITS = "hours since 2000-01-01"
_CALENDAR = "proleptic_gregorian"
_STEP_HOURS = 6


@dataclasses.dataclass
class AceFormatPaths:
    """Where ``write_ace_format_dataset`` put things and what it wrote.

    Attributes:
        data_dir: directory of the data files (``data_*.nc``).
        means_path: ``centering.nc``, one scalar mean per variable.
        stds_path: ``scaling-full-field.nc``, one scalar std per variable.
        residual_stds_path: ``scaling-residual.nc``, stds of one-step changes.
        prognostic: variables that are both inputs and outputs.
        forcing: input-only variables.
        diagnostic: output-only variables.
    """

    data_dir: Path
    means_path: Path
    stds_path: Path
    residual_stds_path: Path
    prognostic: list[str]
    forcing: list[str]
    diagnostic: list[str]

    @property
    def all_names(self) -> list[str]:
        """Prognostic, forcing and diagnostic names together."""
        return self.prognostic + self.forcing + self.diagnostic


def hybrid_coefficients(n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ak, bk)`` of ``n_levels + 1`` interfaces; pressure rises monotonically.

    Interface pressure is ``ak + bk * ps``: 100 Pa at the top (``i = 0``), ``ps``
    at the surface (``ak = 0``, ``bk = 1``).
    """
    eta = np.linspace(0.0, 1.0, n_levels + 1)
    ak = 100.0 * (1.0 - eta) + 20000.0 * eta * (1.0 - eta)
    bk = eta**2
    return ak, bk


def _smooth_field(
    rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, hours: np.ndarray
) -> np.ndarray:
    """``[time, lat, lon]`` sum of a few travelling waves, values in about [-1, 1]."""
    lat_r, lon_r = np.deg2rad(lat)[None, :, None], np.deg2rad(lon)[None, None, :]
    t = hours[:, None, None]
    out = np.zeros((len(hours), len(lat), len(lon)))
    for wavenumber in (1, 2, 3):
        phase = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(-0.05, 0.05)  # radians per hour
        amplitude = rng.uniform(0.2, 0.4)
        out += (
            amplitude
            * np.cos(lat_r)
            * np.cos(wavenumber * lon_r + phase + speed * t)
            * np.cos(rng.integers(1, 3) * lat_r)
        )
    return out


def _variables(
    *, lat: np.ndarray, lon: np.ndarray, hours: np.ndarray, n_levels: int, seed: int
) -> dict[str, tuple[np.ndarray, dict[str, str]]]:
    rng = np.random.default_rng(seed)
    coslat = np.cos(np.deg2rad(lat))[None, :, None]

    def field(scale: float) -> np.ndarray:
        return scale * _smooth_field(rng, lat, lon, hours)

    out: dict[str, tuple[np.ndarray, dict[str, str]]] = {}
    out["PRESsfc"] = (
        100000.0 + field(1500.0),
        {"units": "Pa", "long_name": "surface pressure"},
    )
    for k in range(n_levels):
        height = 1.0 - (k + 0.5) / n_levels  # 1 near the top, 0 near the surface
        out[f"air_temperature_{k}"] = (
            230.0 - 30.0 * height + 40.0 * coslat + field(5.0),
            {"units": "K", "long_name": f"air temperature level-{k}"},
        )
        out[f"specific_total_water_{k}"] = (
            0.015 * coslat**2 * np.exp(-4.0 * height) * np.exp(field(0.5)) + 1e-6,
            {"units": "kg/kg", "long_name": f"specific total water level-{k}"},
        )
    out["PRATEsfc"] = (
        3e-5 * coslat**2 * np.exp(field(1.0)),
        {"units": "kg/m^2/s", "long_name": "surface precipitation rate"},
    )
    lon_r = np.deg2rad(lon)[None, None, :]
    local_hour_angle = lon_r + 2 * np.pi * hours[:, None, None] / 24.0
    out["DSWRFtoa"] = (
        1361.0 * np.clip(coslat * np.cos(local_hour_angle), 0.0, None),
        {"units": "W/m^2", "long_name": "downward shortwave radiative flux at TOA"},
    )
    out["surface_temperature"] = (
        250.0 + 45.0 * coslat + field(3.0),
        {"units": "K", "long_name": "surface temperature"},
    )
    return out


def _write(ds: xr.Dataset, path: Path) -> None:
    encoding: dict[str, dict[str, object]] = {
        str(name): {"_FillValue": None} for name in ds.coords
    }
    if "time" in ds.coords:
        encoding["time"].update(units=_TIME_UNITS, calendar=_CALENDAR, dtype="f8")
    for name, checksum in checksum_encoding(ds).items():
        encoding.setdefault(name, {}).update(checksum)
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)


def _write_stats(
    variables: dict[str, tuple[np.ndarray, dict[str, str]]],
    *,
    n_times: int,
    stats_dir: Path,
) -> None:
    """ACE's three statistics files, from the values as stored (float32).

    Residuals ``x[t+1] - x[t]`` are taken within files (``n_times`` each).
    """
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    residual_stds: dict[str, float] = {}
    for name, (field, _) in variables.items():
        stored = field.astype(np.float32).astype(np.float64)
        chunks = [stored[i : i + n_times] for i in range(0, len(stored), n_times)]
        diffs = np.concatenate([np.diff(c, axis=0) for c in chunks])
        means[name] = float(stored.mean())
        stds[name] = float(stored.std())
        residual_stds[name] = float(diffs.std()) if diffs.size else stds[name]
    for file_name, scalars in [
        ("centering.nc", means),
        ("scaling-full-field.nc", stds),
        ("scaling-residual.nc", residual_stds),
    ]:
        data_vars = {n: ((), v) for n, v in scalars.items()}
        _write(xr.Dataset(data_vars), stats_dir / file_name)


def write_ace_format_dataset(
    out_dir: Path,
    *,
    n_lat: int = 8,
    n_lon: int = 16,
    n_levels: int = 2,
    n_times: int = 12,
    n_files: int = 1,
    seed: int = 0,
) -> AceFormatPaths:
    """Write a small dataset in ACE's layout and its normalisation statistics.

    Files ``out_dir/data/data_<j>.nc`` each hold ``n_times`` consecutive
    6-hourly times (file ``j`` continues where ``j - 1`` ended); statistics go
    to ``out_dir/stats``.

    Args:
        out_dir: directory to write into (created if needed).
        n_lat: number of latitudes (regular cell centres, ascending).
        n_lon: number of longitudes (from 0 degrees).
        n_levels: number of vertical layers.
        n_times: times per file.
        n_files: number of files.
        seed: seed of the random patterns.

    Returns:
        The paths written and the prognostic/forcing/diagnostic names.
    """
    if min(n_lat, n_lon, n_levels, n_times, n_files) < 1:
        raise ValueError("n_lat, n_lon, n_levels, n_times and n_files must be >= 1")
    out_dir = Path(out_dir)
    data_dir, stats_dir = out_dir / "data", out_dir / "stats"
    data_dir.mkdir(parents=True, exist_ok=True)
    stats_dir.mkdir(parents=True, exist_ok=True)
    lat = -90.0 + (np.arange(n_lat) + 0.5) * 180.0 / n_lat
    lon = np.arange(n_lon) * 360.0 / n_lon
    hours = np.arange(n_times * n_files, dtype=np.float64) * _STEP_HOURS
    times = np.datetime64("2000-01-01T00:00", "ns") + (hours * 3600 * 1e9).astype(
        "timedelta64[ns]"
    )
    variables = _variables(lat=lat, lon=lon, hours=hours, n_levels=n_levels, seed=seed)
    ak, bk = hybrid_coefficients(n_levels)
    scalars = {f"ak_{i}": ((), ak[i], {"units": "Pa"}) for i in range(n_levels + 1)}
    scalars.update(
        {f"bk_{i}": ((), bk[i], {"units": "1"}) for i in range(n_levels + 1)}
    )
    coords = {
        "lat": ("lat", lat, {"units": "degrees_north"}),
        "lon": ("lon", lon, {"units": "degrees_east"}),
    }
    for j in range(n_files):
        window = slice(j * n_times, (j + 1) * n_times)
        data_vars = {
            name: (("time", "lat", "lon"), values[window].astype(np.float32), attrs)
            for name, (values, attrs) in variables.items()
        }
        ds = xr.Dataset(
            {**data_vars, **scalars}, coords={**coords, "time": times[window]}
        )
        _write(ds, data_dir / f"data_{j:03d}.nc")

    _write_stats(variables, n_times=n_times, stats_dir=stats_dir)
    prognostic = ["PRESsfc"]
    prognostic += [f"air_temperature_{k}" for k in range(n_levels)]
    prognostic += [f"specific_total_water_{k}" for k in range(n_levels)]
    return AceFormatPaths(
        data_dir=data_dir,
        means_path=stats_dir / "centering.nc",
        stds_path=stats_dir / "scaling-full-field.nc",
        residual_stds_path=stats_dir / "scaling-residual.nc",
        prognostic=prognostic,
        forcing=["DSWRFtoa", "surface_temperature"],
        diagnostic=["PRATEsfc"],
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.data.ace_format_fixture --out DIR``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fme.ace.data.ace_format_fixture",
        description="Write a small synthetic dataset in ACE's atmosphere layout.",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-lat", type=int, default=16)
    parser.add_argument("--n-lon", type=int, default=32)
    parser.add_argument("--n-levels", type=int, default=2)
    parser.add_argument("--n-times", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_ace_format_dataset(
        args.out,
        n_lat=args.n_lat,
        n_lon=args.n_lon,
        n_levels=args.n_levels,
        n_times=args.n_times,
        seed=args.seed,
    )
    print(f"wrote {paths.data_dir} and {paths.means_path.parent}")


if __name__ == "__main__":
    main()
