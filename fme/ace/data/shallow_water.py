"""Synthetic shallow-water training data written in ACE's netCDF layout.

Trajectories come from ``torch_harmonics.examples.ShallowWaterSolver`` (float64)
with a passive tracer advected in flux form next to the solver's own
geopotential / vorticity / divergence equations, using the solver's
Adams-Bashforth time scheme and hyperdiffusion. All trajectories of a dataset
are integrated together as one batch; the batched tendency reproduces
``ShallowWaterSolver.dudtspec`` (tests compare them) with faster, fused
spectral transforms built from the solver's own transform weights.

Layout written under ``out_dir``::

    train/trajectory_000.nc ...      one file per trajectory, dims (time, lat, lon)
    validation/trajectory_000.nc ...
    stats/centering.nc               scalar mean of each field (train data)
    stats/scaling-full-field.nc      scalar std of each field (train data)
    stats/scaling-residual.nc        scalar std of one-step differences x[t+1]-x[t]
    COMPLETE.json                    written last; marks a complete dataset

Grid: Gaussian (``legendre-gauss``) latitudes written ascending, south to north
(the solver orders them north to south; we flip rows on output), longitudes
``0 .. 360 - dlon`` degrees. Spectral truncation is triangular with degrees
``0 .. lmax - 1``; ``lmax = 22`` on the 32x64 grid is the classic alias-free
T21 grid, which keeps the undiffused geopotential equation stable.

Initial flow: the random vorticity of the solver's
``random_initial_condition``, zero divergence and the geopotential in
nonlinear balance with it (as in the solver's Galewsky case), plus a damping
of the divergence with a one-day e-folding time. Without both, undamped
gravity waves dominate and winds change more in 6 hours than their whole
variability (residual std > full std); with them the residual/full std ratio
is about 0.1 (geopotential), 0.2 (eastward wind), 0.4 (northward wind) and
0.03 (tracer) on the default preset.

The tracer starts as a small positive background plus a few smooth Gaussian
blobs. Spectral advection is not positivity preserving, so instead of clipping
(which would break conservation) the presets use large, smooth blobs and a
Laplacian tracer diffusivity strong enough that the recorded tracer stays
non-negative; the generator checks this and raises if it ever fails. Diffusion
and hyperdiffusion leave the global mean (degree 0) untouched, and flux-form
advection has no degree-0 tendency, so the tracer integral is conserved to
rounding, as is the geopotential integral (mass).
"""

import argparse
import dataclasses
import datetime
import json
import math
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch_harmonics.examples import ShallowWaterSolver

from fme.core.netcdf_files import checksum_encoding

FIELD_METADATA: dict[str, dict[str, str]] = {
    "geopotential": {"units": "m^2/s^2", "long_name": "geopotential (g * depth)"},
    "eastward_wind": {"units": "m/s", "long_name": "eastward wind"},
    "northward_wind": {"units": "m/s", "long_name": "northward wind"},
    "tracer": {"units": "1", "long_name": "passive tracer mixing ratio"},
}
FIELD_NAMES = list(FIELD_METADATA)
TIME_UNITS = "hours since 2000-01-01"
CALENDAR = "proleptic_gregorian"
_MARKER = "COMPLETE.json"
_FORMAT_VERSION = 1
_EPOCH = np.datetime64("2000-01-01T00:00:00", "ns")
_GAP_DAYS = 30  # idle days between consecutive trajectories' recorded spans


@dataclasses.dataclass(frozen=True)
class ShallowWaterPreset:
    """Size and physics of a generated shallow-water dataset.

    Attributes:
        nlat: number of Gaussian latitudes.
        nlon: number of longitudes.
        lmax: spectral truncation (degrees ``0 .. lmax - 1``); at most ``nlat``.
        n_train: trajectories written to ``train/``.
        n_validation: trajectories written to ``validation/``.
        n_times: recorded samples per trajectory.
        sample_hours: hours between recorded samples.
        solver_dt_seconds: solver time step; must divide ``sample_hours`` exactly
            and satisfy the gravity-wave stability limit of the grid.
        spinup_days: days integrated before the first recorded sample.
        mean_depth_m: mean fluid depth (the solver's ``havg``); sets the
            gravity-wave speed and therefore the stable time step (2500 m:
            157 m/s, so 1200 s is stable at T21; the solver's 10 km would need
            600 s).
        mach: amplitude of the random initial vorticity relative to the
            gravity-wave speed (``random_initial_condition(mach=...)``); its
            random divergence and geopotential are replaced by balanced ones.
        tracer_background: uniform positive tracer value outside the blobs.
        n_tracer_blobs: number of Gaussian tracer blobs of amplitude one.
        tracer_blob_radius_degrees: e-folding angular radius of each blob.
        tracer_diffusivity: Laplacian tracer diffusivity in m^2/s (on top of
            the solver's hyperdiffusion); keeps the tracer smooth and positive.
        divergence_damping_days: e-folding time of a damping of the divergence
            (all degrees), which removes gravity waves and leaves the slow,
            predictable flow; 0 disables it (then stepping equals the solver's).
    """

    nlat: int
    nlon: int
    lmax: int
    n_train: int
    n_validation: int
    n_times: int
    sample_hours: int = 6
    solver_dt_seconds: float = 1200.0
    spinup_days: float = 5.0
    mean_depth_m: float = 2500.0
    mach: float = 2.0
    tracer_background: float = 0.02
    n_tracer_blobs: int = 4
    tracer_blob_radius_degrees: float = 20.0
    tracer_diffusivity: float = 1.5e6
    divergence_damping_days: float = 1.0

    def __post_init__(self):
        for name in ("nlat", "nlon", "lmax", "n_train", "sample_hours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_validation < 0:
            raise ValueError(f"n_validation must be >= 0, got {self.n_validation}")
        if self.n_times < 2:
            raise ValueError(f"n_times must be >= 2, got {self.n_times}")
        if self.lmax > self.nlat or self.lmax > self.nlon // 2 + 1:
            raise ValueError(
                f"lmax must be <= nlat ({self.nlat}) and <= nlon // 2 + 1 "
                f"({self.nlon // 2 + 1}), got {self.lmax}"
            )
        steps = self.sample_hours * 3600 / max(self.solver_dt_seconds, 1e-300)
        if self.solver_dt_seconds <= 0 or abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"solver_dt_seconds must divide sample_hours * 3600 = "
                f"{self.sample_hours * 3600} exactly, got {self.solver_dt_seconds}"
            )
        for name in (
            "spinup_days",
            "tracer_background",
            "tracer_diffusivity",
            "divergence_damping_days",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.tracer_blob_radius_degrees <= 0 or self.mean_depth_m <= 0:
            raise ValueError(
                "tracer_blob_radius_degrees and mean_depth_m must be positive"
            )

    @property
    def steps_per_sample(self) -> int:
        """Solver steps between recorded samples."""
        return round(self.sample_hours * 3600 / self.solver_dt_seconds)

    @property
    def spinup_steps(self) -> int:
        """Solver steps before the first recorded sample."""
        return round(self.spinup_days * 86400 / self.solver_dt_seconds)


PRESETS: dict[str, ShallowWaterPreset] = {
    # T21 on a 32x64 Gaussian grid; 240 six-hourly samples = 60 days each.
    "default": ShallowWaterPreset(
        nlat=32, nlon=64, lmax=22, n_train=6, n_validation=2, n_times=240
    ),
    # T5 on an 8x16 Gaussian grid, for tests.
    "tiny": ShallowWaterPreset(
        nlat=8,
        nlon=16,
        lmax=6,
        n_train=2,
        n_validation=1,
        n_times=20,
        solver_dt_seconds=2160.0,
        spinup_days=1.0,
        n_tracer_blobs=1,
        tracer_blob_radius_degrees=55.0,
        tracer_diffusivity=6.0e6,
    ),
}


class _FusedTransforms:
    """The solver's (vector) spherical harmonic transforms as one batched matmul.

    Uses the precomputed weights of the solver's torch-harmonics modules, so
    results equal theirs to rounding; fusing the real/imaginary and
    spheroidal/toroidal contractions makes the batched integration ~4x faster.
    """

    def __init__(self, solver: ShallowWaterSolver):
        self.nlat, self.nlon = solver.nlat, solver.nlon
        self.lmax, self.mmax = solver.lmax, solver.mmax
        c = torch.complex128
        self.w_sht = solver.sht.weights.to(c).transpose(1, 2).contiguous()
        self.w_isht = solver.isht.pct.to(c).contiguous()
        w = solver.vsht.weights.to(c)  # [2, m, l, k]; second part acts as imaginary
        forward = torch.stack(
            [torch.cat([w[0], 1j * w[1]], -1), torch.cat([1j * w[1], -w[0]], -1)]
        )  # [out component, m, l, (in component, k)]
        self.w_vsht = forward.permute(1, 3, 0, 2).reshape(self.mmax, -1, 2 * self.lmax)
        d = solver.ivsht.dpct.to(c)  # [2, m, l, k]
        inverse = torch.stack(
            [torch.stack([d[0], 1j * d[1]], -1), torch.stack([1j * d[1], -d[0]], -1)],
            1,
        )  # [m, in component, l, k, out component]
        self.w_ivsht = inverse.permute(0, 1, 2, 4, 3).reshape(
            self.mmax, 2 * self.lmax, -1
        )

    def _forward(self, x: torch.Tensor, weights: torch.Tensor, rows: int):
        xf = 2.0 * torch.pi * torch.fft.rfft(x, dim=-1, norm="forward")
        xf = xf[..., : self.mmax].reshape(-1, rows, self.mmax).permute(2, 0, 1)
        return torch.bmm(xf, weights).permute(1, 2, 0)

    def _inverse(self, x: torch.Tensor, weights: torch.Tensor, rows: int):
        g = torch.bmm(x.reshape(-1, rows, self.mmax).permute(2, 0, 1), weights)
        g = g.permute(1, 2, 0).reshape(-1, self.nlat, self.mmax)
        g[..., 0].imag.zero_()  # as torch-harmonics: m = 0 is real
        return torch.fft.irfft(g, n=self.nlon, dim=-1, norm="forward")

    def sht(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., nlat, nlon]`` real grid to ``[..., lmax, mmax]`` coefficients."""
        out = self._forward(x, self.w_sht, self.nlat)
        return out.reshape(*x.shape[:-2], self.lmax, self.mmax)

    def isht(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., lmax, mmax]`` coefficients to the ``[..., nlat, nlon]`` grid."""
        out = self._inverse(x, self.w_isht, self.lmax)
        return out.reshape(*x.shape[:-2], self.nlat, self.nlon)

    def vsht(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 2, nlat, nlon]`` vector grid to spheroidal/toroidal spectra."""
        out = self._forward(x, self.w_vsht, 2 * self.nlat)
        return out.reshape(*x.shape[:-3], 2, self.lmax, self.mmax)

    def ivsht(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 2, lmax, mmax]`` spectra to the ``[..., 2, nlat, nlon]`` grid."""
        out = self._inverse(x, self.w_ivsht, 2 * self.lmax)
        return out.reshape(*x.shape[:-3], 2, self.nlat, self.nlon)


class ShallowWaterWithTracer:
    """Batched float64 shallow-water dynamics plus a flux-form passive tracer.

    The state is ``[batch, 4, lmax, mmax]`` complex spectra of geopotential,
    vorticity, divergence (the solver's ``uspec``) and tracer.

    Args:
        preset: grid, time step and physics.
    """

    def __init__(self, preset: ShallowWaterPreset):
        self.preset = preset
        self.solver = ShallowWaterSolver(
            preset.nlat,
            preset.nlon,
            preset.solver_dt_seconds,
            lmax=preset.lmax,
            mmax=preset.lmax,
            grid="legendre-gauss",
            havg=preset.mean_depth_m,
        ).to(torch.float64)
        self.transforms = _FusedTransforms(self.solver)
        s = self.solver
        tracer_damping = torch.exp(
            s.dt * preset.tracer_diffusivity * s.lap  # lap = -l(l+1)/a^2
        )
        self._tracer_filter = s.hyperdiff * tracer_damping
        self._divergence_filter = s.hyperdiff.clone()
        if preset.divergence_damping_days > 0:
            rate = s.dt / (preset.divergence_damping_days * 86400.0)
            self._divergence_filter *= math.exp(-rate)

    @property
    def lat_degrees(self) -> np.ndarray:
        """Latitudes in the solver's order (north to south), degrees."""
        return np.rad2deg(self.solver.lats.numpy())

    @property
    def lon_degrees(self) -> np.ndarray:
        """Longitudes, degrees east from 0."""
        return np.rad2deg(self.solver.lons.numpy())

    def initial_state(self, seeds: list[int]) -> torch.Tensor:
        """Random flow (solver's ``random_initial_condition``) and tracer blobs.

        Each trajectory depends only on its own seed; the global torch RNG is
        left untouched.
        """
        p, s = self.preset, self.solver
        lat = s.lats.reshape(-1, 1)
        lon = s.lons.reshape(1, -1)
        width = 1.0 - math.cos(math.radians(p.tracer_blob_radius_degrees))
        states = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                flow = self._balanced(s.random_initial_condition(mach=p.mach))
            rng = np.random.default_rng(seed)
            tracer = torch.full_like(lat * lon, p.tracer_background)
            for _ in range(p.n_tracer_blobs):
                clat = math.asin(rng.uniform(-1.0, 1.0))  # uniform on the sphere
                clon = rng.uniform(0.0, 2.0 * math.pi)
                cos_dist = torch.sin(lat) * math.sin(clat) + torch.cos(lat) * math.cos(
                    clat
                ) * torch.cos(lon - clon)
                tracer = tracer + torch.exp(-(1.0 - cos_dist) / width)
            tracer_spec = self.transforms.sht(tracer).to(flow.dtype)
            states.append(torch.cat([flow, torch.tril(tracer_spec)[None]]))
        return torch.stack(states)

    def _balanced(self, uspec: torch.Tensor) -> torch.Tensor:
        """Keep the random vorticity; zero divergence; geopotential in balance.

        The nonlinear balance (as in the solver's Galewsky initial condition)
        makes the initial divergence tendency vanish, so the flow starts near
        the slow manifold instead of being dominated by gravity waves.
        """
        s = self.solver
        out = uspec.clone()
        out[2] = 0.0
        uv = s.getuv(out[1:])
        flux = s.vrtdivspec(uv * (s.spec2grid(out[1]) + s.coriolis))
        phi = s.invlap * flux[0] - s.grid2spec(0.5 * (uv**2).sum(0))
        phi[0, 0] = uspec[0, 0, 0]  # keep the mean geopotential
        out[0] = torch.tril(phi)
        return out

    def tendency(self, state: torch.Tensor) -> torch.Tensor:
        """Time derivative of ``state``; the first three fields match ``dudtspec``."""
        s, t = self.solver, self.transforms
        grid = t.isht(state)
        uv = t.ivsht(s.invlap * state[:, 1:3] / s.radius)
        abs_vorticity = grid[:, 1] + s.coriolis
        fluxes = torch.stack(
            [uv * abs_vorticity[:, None], uv * grid[:, 0:1], uv * grid[:, 3:4]], 1
        )
        flux_spec = s.lap * s.radius * t.vsht(fluxes)  # (vorticity, divergence)
        energy = grid[:, 0] + 0.5 * (uv**2).sum(1)
        d = torch.empty_like(state)
        d[:, 0] = -flux_spec[:, 1, 1]
        d[:, 1] = -flux_spec[:, 0, 1]
        d[:, 2] = flux_spec[:, 0, 0] - s.lap * t.sht(energy)
        d[:, 3] = -flux_spec[:, 2, 1]
        return d

    def integrate(
        self, state: torch.Tensor, n_steps: int, history: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Advance ``n_steps`` solver steps with the solver's time scheme.

        Third-order Adams-Bashforth started, like ``ShallowWaterSolver.timestep``,
        by forward Euler and its second-step rule; ``history`` (previous
        tendencies, newest first) carries the scheme across calls, so an empty
        list reproduces ``solver.timestep(uspec, n_steps)``.
        """
        dt = self.solver.dt
        for _ in range(n_steps):
            d = self.tendency(state)
            if not history:
                now, old = d, d
            elif len(history) == 1:
                now, old = history[0], d
            else:
                now, old = history[0], history[1]
            state = state + dt * (
                (23.0 / 12.0) * d - (16.0 / 12.0) * now + (5.0 / 12.0) * old
            )
            state[:, 1] = self.solver.hyperdiff * state[:, 1]
            state[:, 2] = self._divergence_filter * state[:, 2]
            state[:, 3] = self._tracer_filter * state[:, 3]
            history = [d] + history[:1]
        return state, history

    def grid_fields(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [batch, nlat, nlon]}`` float64 grid fields (north to south)."""
        s, t = self.solver, self.transforms
        grid = t.isht(state[:, [0, 3]])
        uv = t.ivsht(s.invlap * state[:, 1:3] / s.radius)
        return {
            "geopotential": grid[:, 0],
            "eastward_wind": uv[:, 0],
            "northward_wind": uv[:, 1],
            "tracer": grid[:, 1],
        }

    def global_integrals(self, state: torch.Tensor) -> torch.Tensor:
        """``[batch, 2]`` solver-quadrature integrals of geopotential and tracer."""
        fields = self.grid_fields(state)
        both = torch.stack([fields["geopotential"], fields["tracer"]], 1)
        return self.solver.integrate_grid(both)


def trajectory_seed(seed: int, index: int) -> int:
    """Seed of trajectory ``index`` (train first, then validation)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def simulate(preset: ShallowWaterPreset, seed: int) -> dict[str, np.ndarray]:
    """All trajectories of a dataset on the solver grid.

    Runs single-threaded: the batched transforms are many small operations, for
    which extra OpenMP threads cost more than they give (several times slower
    on a busy 2-core machine). The caller's thread setting is restored.

    Returns:
        ``{name: [n_train + n_validation, n_times, nlat, nlon]}`` float32, rows
        ordered north to south as the solver gives them.

    Raises:
        RuntimeError: if the integration blows up or the tracer goes negative.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = _simulate(preset, seed)
    finally:
        torch.set_num_threads(threads)
    if not all(np.isfinite(v).all() for v in out.values()):
        raise RuntimeError(
            "shallow-water integration blew up; reduce solver_dt_seconds or mach"
        )
    tracer_min = float(out["tracer"].min())
    if tracer_min < 0:
        raise RuntimeError(
            f"generated tracer went negative ({tracer_min:.3g}); increase "
            "tracer_diffusivity or tracer_blob_radius_degrees of the preset"
        )
    return out


def _simulate(preset: ShallowWaterPreset, seed: int) -> dict[str, np.ndarray]:
    model = ShallowWaterWithTracer(preset)
    n_traj = preset.n_train + preset.n_validation
    state = model.initial_state([trajectory_seed(seed, i) for i in range(n_traj)])
    shape = (n_traj, preset.n_times, preset.nlat, preset.nlon)
    out = {name: np.empty(shape, dtype=np.float32) for name in FIELD_NAMES}
    state, history = model.integrate(state, preset.spinup_steps, [])
    for t in range(preset.n_times):
        if t > 0:
            state, history = model.integrate(state, preset.steps_per_sample, history)
        for name, value in model.grid_fields(state).items():
            out[name][:, t] = value.numpy()
    return out


def trajectory_times(preset: ShallowWaterPreset, index: int) -> np.ndarray:
    """``datetime64[ns]`` sample times of trajectory ``index``.

    Trajectories are laid out one after another from 2000-01-01, each recorded
    span followed by a 30-day gap, so no two trajectories overlap in time.
    """
    span_days = math.ceil(preset.n_times * preset.sample_hours / 24) + _GAP_DAYS
    start = _EPOCH + np.timedelta64(index * span_days, "D")
    steps = np.arange(preset.n_times) * np.timedelta64(preset.sample_hours, "h")
    return (start + steps).astype("datetime64[ns]")


def _trajectory_dataset(
    fields: dict[str, np.ndarray],
    *,
    times: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    attrs: dict[str, str | int | float],
) -> xr.Dataset:
    # the solver orders latitude north to south; store ascending (south to north)
    data_vars = {
        name: (("time", "lat", "lon"), value[:, ::-1], FIELD_METADATA[name])
        for name, value in fields.items()
    }
    coords = {
        "time": ("time", times),
        "lat": ("lat", lat[::-1], {"units": "degrees_north", "long_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "long_name": "longitude"}),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _stats_dataset(values: dict[str, float], description: str) -> xr.Dataset:
    data_vars = {
        name: ((), np.float64(value), FIELD_METADATA[name])
        for name, value in values.items()
    }
    return xr.Dataset(data_vars, attrs={"description": description})


def _write_netcdf(ds: xr.Dataset, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    encoding: dict[str, dict[str, object]] = {
        str(name): {"_FillValue": None} for name in ds.coords
    }
    if "time" in ds.coords:
        encoding["time"].update(units=TIME_UNITS, calendar=CALENDAR, dtype="f8")
    for name, checksum in checksum_encoding(ds).items():
        encoding.setdefault(name, {}).update(checksum)
    ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)
    tmp.replace(path)


def _compute_stats(train: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Centering, full-field and residual scaling over all train samples."""
    stats: dict[str, dict[str, float]] = {"centering": {}, "full": {}, "residual": {}}
    for name, value in train.items():
        x = value.astype(np.float64)
        stats["centering"][name] = float(x.mean())
        stats["full"][name] = float(x.std())
        stats["residual"][name] = float(np.diff(x, axis=1).std())
    return stats


def _marker_content(preset: ShallowWaterPreset, name: str, seed: int) -> dict:
    return {
        "format_version": _FORMAT_VERSION,
        "preset": name,
        "preset_config": dataclasses.asdict(preset),
        "seed": seed,
    }


_OWN_FILES = {
    "train": ("trajectory_*.nc", "trajectory_*.nc.tmp"),
    "validation": ("trajectory_*.nc", "trajectory_*.nc.tmp"),
    "stats": ("centering.nc*", "scaling-full-field.nc*", "scaling-residual.nc*"),
}


def _clear_previous_output(out_dir: Path) -> None:
    """Remove files an earlier (maybe interrupted) run wrote; never others."""
    for sub, patterns in _OWN_FILES.items():
        directory = out_dir / sub
        directory.mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            for path in directory.glob(pattern):
                path.unlink()
        foreign = sorted(p.name for p in directory.iterdir())
        if foreign:
            raise ValueError(
                f"{directory} holds files the generator did not write ({foreign}); "
                "choose an empty or new output directory"
            )


def _resolve_preset(preset: str | ShallowWaterPreset) -> tuple[str, ShallowWaterPreset]:
    if isinstance(preset, ShallowWaterPreset):
        return "custom", preset
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    return preset, PRESETS[preset]


def generate_shallow_water_dataset(
    out_dir: Path,
    *,
    preset: str | ShallowWaterPreset = "default",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) a shallow-water dataset in ACE's layout.

    A dataset is complete once ``COMPLETE.json`` exists; it is written last, so
    an interrupted run is regenerated next time. Only files this generator
    writes are ever removed; other files in ``train/``, ``validation/`` or
    ``stats/`` are an error.

    Args:
        out_dir: directory to write into (created if needed).
        preset: a name in ``PRESETS`` (``"default"``, ``"tiny"``) or a preset.
        seed: base seed; each trajectory derives its own from it.
        overwrite: regenerate even when a complete dataset is already there.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: for an unknown preset, when ``out_dir`` holds a complete
            dataset made with another preset or seed and ``overwrite`` is False,
            or when its subdirectories hold files the generator did not write.
    """
    name, config = _resolve_preset(preset)
    out_dir = Path(out_dir)
    marker = out_dir / _MARKER
    expected = _marker_content(config, name, seed)
    if marker.is_file() and not overwrite:
        found = json.loads(marker.read_text())
        if {k: found.get(k) for k in expected} == expected:
            return out_dir
        raise ValueError(
            f"{out_dir} already holds a shallow-water dataset made with preset "
            f"{found.get('preset')!r} and seed {found.get('seed')}; pass "
            "overwrite=True (--overwrite) to replace it or choose another directory"
        )
    marker.unlink(missing_ok=True)
    _clear_previous_output(out_dir)

    fields = simulate(config, seed)
    model_grid = ShallowWaterWithTracer(config)
    lat, lon = model_grid.lat_degrees, model_grid.lon_degrees
    attrs: dict[str, str | int | float] = {
        "title": "shallow-water equations with a passive tracer",
        "source": "torch_harmonics ShallowWaterSolver, fme.ace.data.shallow_water",
        "grid": "legendre-gauss",
        "spectral_truncation_lmax": config.lmax,
        "solver_dt_seconds": config.solver_dt_seconds,
        "preset": name,
        "seed": seed,
    }
    splits = [("train", 0, config.n_train)]
    splits.append(("validation", config.n_train, config.n_validation))
    for split, first, count in splits:
        for i in range(count):
            index = first + i
            ds = _trajectory_dataset(
                {k: v[index] for k, v in fields.items()},
                times=trajectory_times(config, index),
                lat=lat,
                lon=lon,
                attrs={**attrs, "trajectory_seed": trajectory_seed(seed, index)},
            )
            _write_netcdf(ds, out_dir / split / f"trajectory_{i:03d}.nc")

    stats = _compute_stats({k: v[: config.n_train] for k, v in fields.items()})
    for key, file_name, description in [
        ("centering", "centering.nc", "mean over all train samples"),
        ("full", "scaling-full-field.nc", "std over all train samples"),
        ("residual", "scaling-residual.nc", "std of x[t+1] - x[t] over train"),
    ]:
        ds = _stats_dataset(stats[key], description)
        _write_netcdf(ds, out_dir / "stats" / file_name)
    marker.write_text(json.dumps(expected, indent=2) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m fme.ace.data.shallow_water --out DIR``."""
    parser = argparse.ArgumentParser(
        description="Generate shallow-water training data in ACE's netCDF layout."
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="regenerate a complete dataset"
    )
    args = parser.parse_args(argv)
    existed = (args.out / _MARKER).is_file()
    start = datetime.datetime.now()
    try:
        out = generate_shallow_water_dataset(
            args.out, preset=args.preset, seed=args.seed, overwrite=args.overwrite
        )
    except ValueError as err:
        parser.error(str(err))
    seconds = (datetime.datetime.now() - start).total_seconds()
    if existed and not args.overwrite:
        print(f"complete dataset already at {out}; nothing to do (--overwrite)")
        return
    config = PRESETS[args.preset]
    print(
        f"wrote preset {args.preset!r} (seed {args.seed}) in {seconds:.1f} s:\n"
        f"  {out / 'train'}: {config.n_train} trajectories\n"
        f"  {out / 'validation'}: {config.n_validation} trajectories\n"
        f"  {out / 'stats'}: centering.nc, scaling-full-field.nc, "
        "scaling-residual.nc"
    )


if __name__ == "__main__":
    main()
