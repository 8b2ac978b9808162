"""A small toy atmosphere in ACE's layout whose budgets close by construction.

``python -m fme.ace.data.ace_format_fixture --out DIR`` writes, in seconds and
deterministically (``--seed``), ``DIR/data/data_<j>.nc`` and ACE's statistics
``DIR/stats/{centering,scaling-full-field,scaling-residual}.nc``, and
``DIR/variable_roles.json``: the prognostic, forcing and diagnostic names, for
a tool that writes a training config without importing this package. Names and
layout are ACE's: ``PRESsfc``, ``surface_temperature``,
``air_temperature_<k>``, ``specific_total_water_<k>`` (``k = 0`` at the model
top), the surface and top-of-atmosphere fluxes (``DSWRFsfc`` ...
``ULWRFtoa``), ``LHTFLsfc``, ``SHTFLsfc``, ``PRATEsfc``,
``total_frozen_precipitation_rate``,
``tendency_of_total_water_path_due_to_advection``, the forcings ``DSWRFtoa``,
``HGTsfc``, ``land_fraction``, ``ocean_fraction``, ``sea_ice_fraction``, the
hybrid coordinate as 0-d ``ak_<i>``/``bk_<i>``, ascending latitudes,
longitudes from 0 and a 6-hourly CF time axis.

It is not a simulation, but the fields are built so that ACE's budgets hold
exactly in float64 (and to float32 rounding as stored), with ACE's
definitions (fluxes at the end of each 6-hour interval, as the corrector
reads them):

- dry air: the global mean of ``PRESsfc - g * TWP`` is the same at every time
  (dry-air pressure is a constant field plus travelling waves of zonal
  wavenumber >= 1, whose zonal means vanish; ``PRESsfc`` is solved for);
- water, in every column: ``(TWP(t) - TWP(t-1)) / dt = E - P + A`` with
  ``E = LHTFLsfc / L_v``, ``P = PRATEsfc``, ``A`` the advective tendency, and
  ``A`` has zero global mean (``P`` is scaled so that it does);
- energy, globally: the ACE2 total-energy path changes by the net energy flux
  into the atmosphere times ``dt`` (``ULWRFtoa`` carries the closing constant).

Precipitation is an equatorial band and storm-track waves clipped at zero, so
it is zero over much of the globe (and frozen precipitation is a poleward
fraction of it): positivity and budget corrections act on a network's output.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import xarray as xr

from fme.core.netcdf_files import checksum_encoding

_TIME_UNITS = "hours since 2000-01-01"
_CALENDAR = "proleptic_gregorian"
_STEP_HOURS = 6
_DT = _STEP_HOURS * 3600.0

# ACE's constants (fme.ace.physics holds the same values for the corrector).
_G = 9.80665
_L_V = 2.5e6
_L_F = 3.34e5
_CP = 1004.6
_RD = 287.05
_RV = 461.5
_CV = _CP - _RD
_STEFAN_BOLTZMANN = 5.67e-8

ROLES_FILE = "variable_roles.json"
FORCING_NAMES = sorted(
    ["DSWRFtoa", "HGTsfc", "land_fraction", "ocean_fraction", "sea_ice_fraction"]
)
DIAGNOSTIC_NAMES = sorted(
    [
        "DLWRFsfc",
        "DSWRFsfc",
        "LHTFLsfc",
        "PRATEsfc",
        "SHTFLsfc",
        "ULWRFsfc",
        "ULWRFtoa",
        "USWRFsfc",
        "USWRFtoa",
        "tendency_of_total_water_path_due_to_advection",
        "total_frozen_precipitation_rate",
    ]
)


@dataclasses.dataclass
class AceFormatPaths:
    """Where ``write_ace_format_dataset`` put things and what it wrote.

    Attributes:
        data_dir: directory of the data files (``data_*.nc``).
        means_path: ``centering.nc``, one scalar mean per variable.
        stds_path: ``scaling-full-field.nc``, one scalar std per variable.
        residual_stds_path: ``scaling-residual.nc``, stds of one-step changes.
        roles_path: ``variable_roles.json``, ``{"prognostic": [...],
            "forcing": [...], "diagnostic": [...]}`` (the three lists below).
        prognostic: variables that are both inputs and outputs (sorted).
        forcing: input-only variables (sorted).
        diagnostic: output-only variables (sorted).
    """

    data_dir: Path
    means_path: Path
    stds_path: Path
    residual_stds_path: Path
    roles_path: Path
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


def prognostic_names(n_levels: int) -> list[str]:
    """The prognostic variables for ``n_levels`` layers (sorted)."""
    names = ["PRESsfc", "surface_temperature"]
    names += [f"air_temperature_{k}" for k in range(n_levels)]
    names += [f"specific_total_water_{k}" for k in range(n_levels)]
    return sorted(names)


class _Waves:
    """Travelling waves of zonal wavenumber >= 1 (zero zonal mean on the grid)."""

    def __init__(self, rng: np.random.Generator, lat_r, lon_r, hours, n_lon: int):
        self.rng, self.lat_r, self.lon_r, self.hours = rng, lat_r, lon_r, hours
        self.max_m = max(1, min(3, (n_lon - 1) // 2))

    def __call__(self, amplitude: float, lat_profile: np.ndarray) -> np.ndarray:
        out = np.zeros((len(self.hours), len(self.lat_r), len(self.lon_r)))
        for m in range(1, self.max_m + 1):
            phase = self.rng.uniform(0, 2 * np.pi)
            speed = self.rng.uniform(-0.04, 0.04)  # radians per hour
            out += (
                amplitude
                / self.max_m
                * lat_profile[None, :, None]
                * np.cos(
                    m * self.lon_r[None, None, :]
                    + phase
                    + speed * self.hours[:, None, None]
                )
            )
        return out


def _area_mean(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (x * weights).sum(axis=(-2, -1)) / weights.sum()


def _toy_atmosphere(
    *, lat: np.ndarray, lon: np.ndarray, hours: np.ndarray, n_levels: int, seed: int
) -> dict[str, np.ndarray]:
    """Every variable as ``[time, lat, lon]`` float64; see the module docstring."""
    rng = np.random.default_rng(seed)
    lat_r, lon_r = np.deg2rad(lat), np.deg2rad(lon)
    waves = _Waves(rng, lat_r, lon_r, hours, len(lon))
    coslat = np.cos(lat_r)
    weights = coslat[:, None] * np.ones(len(lon))
    n_t = len(hours)

    def static(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, (n_t, len(lat), len(lon))).copy()

    # surface: two continents, polar sea ice, orography on land
    continents = np.cos(lon_r[None, :] - 1.2) * np.cos(lat_r[:, None] - 0.3)
    continents = np.maximum(continents, np.cos(lon_r[None, :] + 2.0) * coslat[:, None])
    land = np.clip(2.5 * (continents - 0.55), 0.0, 1.0)
    ice = (1.0 - land) * np.clip((np.abs(lat[:, None]) - 60.0) / 20.0, 0.0, 1.0)
    ocean = 1.0 - land - ice
    height = 2500.0 * land**2 * (0.6 + 0.4 * np.cos(2 * lon_r[None, :]))
    out: dict[str, np.ndarray] = {
        "land_fraction": static(land),
        "ocean_fraction": static(ocean),
        "sea_ice_fraction": static(ice),
        "HGTsfc": static(height),
    }

    # dry air: constant global mean; water: positive waves on a moist tropics
    ak, bk = hybrid_coefficients(n_levels)
    dry = static(100000.0 * np.exp(-height / 8000.0)) + waves(800.0, coslat)
    sigma = (np.arange(n_levels) + 0.5) / n_levels  # ~0 at the top, ~1 at the surface
    water = np.stack(
        [
            (0.018 * coslat[None, :, None] ** 2 + 3e-4)
            * sigma[k] ** 3
            * (1.0 + waves(0.35, coslat))
            + 1e-6
            for k in range(n_levels)
        ],
        axis=-1,
    )
    dak, dbk = np.diff(ak), np.diff(bk)
    ps = (dry + (dak * water).sum(-1)) / (1.0 - (dbk * water).sum(-1))
    out["PRESsfc"] = ps
    dp = dak + dbk * ps[..., None]  # [time, lat, lon, level]
    water_path = (water * dp).sum(-1) / _G
    for k in range(n_levels):
        out[f"specific_total_water_{k}"] = water[..., k]

    # temperature: colder aloft and poleward, with waves
    temperature = np.stack(
        [
            200.0
            + 90.0 * sigma[k]
            + 25.0 * coslat[None, :, None] ** 2
            + waves(4.0, coslat)
            for k in range(n_levels)
        ],
        axis=-1,
    )
    for k in range(n_levels):
        out[f"air_temperature_{k}"] = temperature[..., k]
    out["surface_temperature"] = (
        temperature[..., -1] + 4.0 + static(2.0 * land) + waves(1.5, coslat)
    )

    # water budget, per interval (t-1, t] at time t (the first time has none)
    tendency = np.zeros_like(water_path)
    tendency[1:] = np.diff(water_path, axis=0) / _DT
    evaporation = (
        4e-5 * (0.25 + 0.75 * ocean) * coslat[:, None] ** 2 * (1.0 + waves(0.3, coslat))
    )
    storms = waves(0.9, np.abs(np.sin(2 * lat_r)))
    shape = np.maximum(0.0, np.exp(-((lat[:, None] / 10.0) ** 2))[None] + storms - 0.3)
    needed = _area_mean(evaporation, weights) - _area_mean(tendency, weights)
    scale = needed / _area_mean(shape, weights)
    if np.any(scale <= 0):
        raise AssertionError("toy atmosphere: evaporation must exceed water storage")
    precipitation = shape * scale[:, None, None]
    out["PRATEsfc"] = precipitation
    out["total_frozen_precipitation_rate"] = precipitation * np.clip(
        (np.abs(lat[None, :, None]) - 35.0) / 25.0, 0.0, 1.0
    )
    out["tendency_of_total_water_path_due_to_advection"] = (
        tendency - evaporation + precipitation
    )
    out["LHTFLsfc"] = evaporation * _L_V

    # radiation and sensible heat
    hour_angle = lon_r[None, None, :] + 2 * np.pi * hours[:, None, None] / 24.0
    toa_down = 1361.0 * np.clip(coslat[None, :, None] * np.cos(hour_angle), 0.0, None)
    out["DSWRFtoa"] = toa_down
    out["USWRFtoa"] = (0.25 + 0.25 * np.sin(lat_r)[None, :, None] ** 2) * toa_down
    sfc_down_sw = 0.7 * toa_down * (1.0 - 0.3 * (precipitation > 0))
    out["DSWRFsfc"] = sfc_down_sw
    albedo = 0.07 * ocean + 0.25 * land + 0.6 * ice
    out["USWRFsfc"] = albedo[None] * sfc_down_sw
    out["ULWRFsfc"] = _STEFAN_BOLTZMANN * out["surface_temperature"] ** 4
    out["DLWRFsfc"] = 0.8 * _STEFAN_BOLTZMANN * temperature[..., -1] ** 4
    out["SHTFLsfc"] = 10.0 + 20.0 * land[None] * np.clip(np.cos(hour_angle), 0, None)

    # energy: ULWRFtoa = a pattern plus the constant that closes the budget
    p_interface = ak + bk * ps[..., None]  # [t, lat, lon, n_levels + 1]
    dlogp = np.diff(np.log(np.maximum(p_interface, 1.0)), axis=-1)
    thickness = _RD * temperature * (1.0 + (_RV / _RD - 1.0) * water) * dlogp / _G
    below = np.flip(np.cumsum(np.flip(thickness, -1), -1), -1) - thickness
    z_mid = np.maximum(height, 0.0)[None, :, :, None] + below + 0.5 * thickness
    energy = (_CV * temperature + _L_V * water + _G * z_mid) * dp
    energy_path = energy.sum(-1) / _G
    gain = np.zeros(n_t)
    gain[1:] = np.diff(_area_mean(energy_path, weights)) / _DT
    surface_net = (
        out["DSWRFsfc"]
        - out["USWRFsfc"]
        + out["DLWRFsfc"]
        - out["ULWRFsfc"]
        - out["LHTFLsfc"]
        - out["SHTFLsfc"]
        - _L_F * out["total_frozen_precipitation_rate"]
    )
    olr = (
        0.55
        * _STEFAN_BOLTZMANN
        * temperature[..., n_levels // 2] ** 4
        * (1.0 - 0.25 * (precipitation > 0))
    )
    without_olr = toa_down - out["USWRFtoa"] - surface_net
    closing = _area_mean(without_olr - olr, weights) - gain
    out["ULWRFtoa"] = olr + closing[:, None, None]
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
    variables: dict[str, np.ndarray], *, n_times: int, stats_dir: Path
) -> None:
    """ACE's three statistics files, from the values as stored (float32).

    Residuals ``x[t+1] - x[t]`` are taken within files (``n_times`` each); a
    variable that does not change in time (the surface fractions and height)
    gets its full-field std as residual std, so no scale is zero.
    """
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    residual_stds: dict[str, float] = {}
    for name, field in variables.items():
        stored = field.astype(np.float32).astype(np.float64)
        chunks = [stored[i : i + n_times] for i in range(0, len(stored), n_times)]
        diffs = np.concatenate([np.diff(c, axis=0) for c in chunks])
        means[name] = float(stored.mean())
        stds[name] = float(stored.std())
        residual_std = float(diffs.std()) if diffs.size else 0.0
        residual_stds[name] = residual_std if residual_std > 0 else stds[name]
    for file_name, scalars in [
        ("centering.nc", means),
        ("scaling-full-field.nc", stds),
        ("scaling-residual.nc", residual_stds),
    ]:
        data_vars = {n: ((), v) for n, v in scalars.items()}
        _write(xr.Dataset(data_vars), stats_dir / file_name)


_UNITS = {
    "PRESsfc": ("Pa", "surface pressure"),
    "surface_temperature": ("K", "surface temperature"),
    "HGTsfc": ("m", "surface height"),
    "land_fraction": ("1", "land fraction"),
    "ocean_fraction": ("1", "ocean fraction"),
    "sea_ice_fraction": ("1", "sea ice fraction"),
    "PRATEsfc": ("kg/m^2/s", "surface precipitation rate"),
    "total_frozen_precipitation_rate": ("kg/m^2/s", "frozen precipitation rate"),
    "tendency_of_total_water_path_due_to_advection": (
        "kg/m^2/s",
        "tendency of total water path due to advection",
    ),
    "LHTFLsfc": ("W/m^2", "latent heat flux"),
    "SHTFLsfc": ("W/m^2", "sensible heat flux"),
}


def _attrs(name: str) -> dict[str, str]:
    if name in _UNITS:
        units, long_name = _UNITS[name]
    elif name.startswith("air_temperature_"):
        units, long_name = "K", f"air temperature level-{name.rsplit('_', 1)[1]}"
    elif name.startswith("specific_total_water_"):
        units = "kg/kg"
        long_name = f"specific total water level-{name.rsplit('_', 1)[1]}"
    else:
        units, long_name = "W/m^2", f"radiative flux {name}"
    return {"units": units, "long_name": long_name}


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
    """Write the toy atmosphere in ACE's layout and its normalisation statistics.

    Files ``out_dir/data/data_<j>.nc`` each hold ``n_times`` consecutive
    6-hourly times (file ``j`` continues where ``j - 1`` ended); statistics go
    to ``out_dir/stats``.

    Args:
        out_dir: directory to write into (created if needed).
        n_lat: number of latitudes (regular cell centres, ascending).
        n_lon: number of longitudes (from 0 degrees); at least 4.
        n_levels: number of vertical layers.
        n_times: times per file.
        n_files: number of files.
        seed: seed of the wave phases and speeds.

    Returns:
        The paths written and the prognostic/forcing/diagnostic names.
    """
    if min(n_lat, n_levels, n_times, n_files) < 1 or n_lon < 4:
        raise ValueError(
            "n_lat, n_levels, n_times and n_files must be >= 1 and n_lon >= 4"
        )
    out_dir = Path(out_dir)
    data_dir, stats_dir = out_dir / "data", out_dir / "stats"
    data_dir.mkdir(parents=True, exist_ok=True)
    stats_dir.mkdir(parents=True, exist_ok=True)
    lat = -90.0 + (np.arange(n_lat) + 0.5) * 180.0 / n_lat
    lon = np.arange(n_lon) * 360.0 / n_lon
    n_total = n_times * n_files
    # one extra time before the first, so the first stored fluxes have an interval
    hours = np.arange(-1, n_total, dtype=np.float64) * _STEP_HOURS
    fields = _toy_atmosphere(
        lat=lat, lon=lon, hours=hours, n_levels=n_levels, seed=seed
    )
    variables = {name: values[1:] for name, values in fields.items()}
    times = np.datetime64("2000-01-01T00:00", "ns") + (hours[1:] * 3600 * 1e9).astype(
        "timedelta64[ns]"
    )
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
            name: (
                ("time", "lat", "lon"),
                values[window].astype(np.float32),
                _attrs(name),
            )
            for name, values in sorted(variables.items())
        }
        ds = xr.Dataset(
            {**data_vars, **scalars}, coords={**coords, "time": times[window]}
        )
        _write(ds, data_dir / f"data_{j:03d}.nc")
    _write_stats(variables, n_times=n_times, stats_dir=stats_dir)
    roles = {
        "prognostic": prognostic_names(n_levels),
        "forcing": list(FORCING_NAMES),
        "diagnostic": list(DIAGNOSTIC_NAMES),
    }
    roles_path = out_dir / ROLES_FILE
    roles_path.write_text(json.dumps(roles, indent=1) + "\n")
    return AceFormatPaths(
        data_dir=data_dir,
        means_path=stats_dir / "centering.nc",
        stds_path=stats_dir / "scaling-full-field.nc",
        residual_stds_path=stats_dir / "scaling-residual.nc",
        roles_path=roles_path,
        prognostic=roles["prognostic"],
        forcing=roles["forcing"],
        diagnostic=roles["diagnostic"],
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.data.ace_format_fixture --out DIR``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fme.ace.data.ace_format_fixture",
        description="Write a small toy atmosphere in ACE's layout, budgets closed.",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-lat", type=int, default=16)
    parser.add_argument("--n-lon", type=int, default=32)
    parser.add_argument("--n-levels", type=int, default=8)
    parser.add_argument("--n-times", type=int, default=120)
    parser.add_argument("--n-files", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_ace_format_dataset(
        args.out,
        n_lat=args.n_lat,
        n_lon=args.n_lon,
        n_levels=args.n_levels,
        n_times=args.n_times,
        n_files=args.n_files,
        seed=args.seed,
    )
    print(f"wrote {paths.data_dir}, {paths.means_path.parent} and {paths.roles_path}")


if __name__ == "__main__":
    main()
