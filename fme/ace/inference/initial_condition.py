"""Initial conditions of a forecast-only run, and the restart file it leaves.

ACE's ``initial_condition: {path, engine, start_indices}``: a file whose
prognostic variables are ``(sample, lat, lon)`` (or ``(time, lat, lon)``)
with a ``time`` variable along the first dimension; every entry starts one
rollout, or the entries ``start_indices`` selects. The ``restart.nc`` a run
writes has the same layout (the last state of every rollout, at its valid
time), so pointing ``initial_condition.path`` at it continues the run.
"""

import dataclasses
from pathlib import Path

import netCDF4
import numpy as np
import torch

from fme.ace.data.store import _to_datetime64, open_data
from fme.ace.evaluation.writer import provenance_attributes
from fme.ace.inference.data import ExplicitIndices, StartIndices, TimestampList
from fme.core.tensors import TensorDict, TensorMapping

RESTART_FILENAME = "restart.nc"
INITIAL_CONDITION_FILENAME = "initial_condition.nc"


@dataclasses.dataclass
class InitialConditionConfig:
    """ACE's ``initial_condition``.

    Attributes:
        path: a netCDF file (or zarr store with ``engine: zarr``) of the
            prognostic variables, ``(sample, lat, lon)``, with ``time``.
        engine: ``netcdf4`` or ``zarr``.
        start_indices: which entries start rollouts (null: all of them).
    """

    path: str
    engine: str = "netcdf4"
    start_indices: StartIndices | TimestampList | ExplicitIndices | None = None

    def __post_init__(self):
        if self.engine not in ("netcdf4", "zarr"):
            raise ValueError(
                f"initial_condition.engine {self.engine!r} is unknown; allowed: "
                "netcdf4, zarr"
            )


@dataclasses.dataclass
class InitialCondition:
    """Prognostic state and start time of each rollout.

    Attributes:
        state: ``{name: [n_samples, lat, lon]}``.
        times: ``[n_samples]`` ``datetime64[ns]``.
    """

    state: TensorDict
    times: np.ndarray


def read_initial_condition(
    config: InitialConditionConfig, *, names: list[str], img_shape: tuple[int, int]
) -> InitialCondition:
    """The initial conditions ``config`` names, for the prognostic ``names``.

    Raises:
        ValueError: naming the file when it is missing, lacks a variable or
            ``time``, has the wrong grid, or ``start_indices`` fall outside it.
    """
    path = Path(config.path)
    if not path.exists():
        raise ValueError(
            f"initial_condition.path {str(path)!r} does not exist; point it at a "
            "file of the prognostic variables (or a restart.nc of a previous run)"
        )
    engine = "zarr" if config.engine == "zarr" else None
    with open_data(path, engine, role="initial condition file") as ds:
        if "time" not in ds.variables:
            raise ValueError(f"initial condition {path} has no 'time' variable")
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise ValueError(
                f"initial condition {path} lacks the prognostic variables {missing}; "
                f"it holds {sorted(str(v) for v in ds.data_vars)}"
            )
        times = _to_datetime64(np.atleast_1d(ds["time"].values), path)
        n_entries = len(times)
        if config.start_indices is None:
            indices = list(range(n_entries))
        else:
            indices = config.start_indices.as_indices(times)
        bad = [i for i in indices if not 0 <= i < n_entries]
        if bad:
            raise ValueError(
                f"initial_condition.start_indices {bad} are outside the {n_entries} "
                f"entries of {path}"
            )
        state = {}
        for name in names:
            values = np.asarray(ds[name].values, dtype=np.float32)
            if values.ndim == 2:
                values = values[None]
            if values.ndim != 3 or values.shape[1:] != img_shape:
                raise ValueError(
                    f"initial condition {name!r} in {path} has shape {values.shape}; "
                    f"expected (sample, {img_shape[0]}, {img_shape[1]}) on the "
                    "checkpoint's grid"
                )
            state[name] = torch.tensor(values[indices])
    return InitialCondition(state=state, times=times[indices])


def write_state_file(
    path: Path,
    *,
    state: TensorMapping,
    times: np.ndarray,
    lat: torch.Tensor,
    lon: torch.Tensor,
    variable_metadata: dict[str, dict[str, str]],
    kind: str,
) -> None:
    """Write ``{name: [sample, lat, lon]}`` at ``times`` as an initial-condition file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.setncatts(provenance_attributes(kind))
        ds.createDimension("sample", len(times))
        ds.createDimension("lat", lat.numel())
        ds.createDimension("lon", lon.numel())
        for name, values, units in (
            ("lat", lat, "degrees_north"),
            ("lon", lon, "degrees_east"),
        ):
            var = ds.createVariable(name, "f8", (name,))
            var.units = units
            var.standard_name = "latitude" if name == "lat" else "longitude"
            var[:] = values.detach().cpu().numpy()
        time = ds.createVariable("time", "i8", ("sample",))
        time.units = "microseconds since 1970-01-01"
        time.calendar = "proleptic_gregorian"
        time.standard_name = "time"
        micros = (np.asarray(times, "datetime64[us]") - np.datetime64(0, "us")) // (
            np.timedelta64(1, "us")
        )
        time[:] = micros.astype(np.int64)
        for name, values in state.items():
            # per-chunk checksums, checked when the file is read back
            var = ds.createVariable(
                name, "f4", ("sample", "lat", "lon"), fletcher32=True
            )
            var.setncatts(dict(variable_metadata.get(name, {})))
            var[:] = values.detach().to("cpu", torch.float32).numpy()
    tmp.replace(path)
