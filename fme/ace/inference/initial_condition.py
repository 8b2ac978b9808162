"""Initial conditions of a forecast-only run, and the restart file it leaves.

ACE's ``initial_condition: {path, engine, start_indices}``: a file whose
prognostic variables are ``(sample, lat, lon)`` (or ``(time, lat, lon)``)
with a ``time`` variable along the first dimension; every entry starts one
rollout, or the entries ``start_indices`` selects. The ``restart.nc`` a run
writes has the same layout (the last state of every rollout, at its valid
time), so pointing ``initial_condition.path`` at it continues the run.

A rollout's corrector state travels with the restart, as in ACE's restart
file: the dry-air reference ``conserve_dry_air`` pins to (the *initial*
condition's global-mean dry-air pressure, not the restart state's) is the
variable ``_fme_state__stepper__corrector_state.global_dry_air_mass``
``(sample, 1, 1)`` float64 Pa, with ACE's presence marker and schema
attribute, so a restarted run continues bit-identically and restarts written
by either package carry their reference to the other. A file without it (a
plain initial condition) seeds the reference from its own state.
"""

import dataclasses
import logging
from pathlib import Path

import netCDF4
import numpy as np
import torch

from fme.ace.corrector.corrector import CorrectorState
from fme.ace.data.store import _to_datetime64, open_data
from fme.ace.evaluation.writer import provenance_attributes
from fme.ace.inference.data import ExplicitIndices, StartIndices, TimestampList
from fme.core.tensors import TensorDict, TensorMapping

RESTART_FILENAME = "restart.nc"
INITIAL_CONDITION_FILENAME = "initial_condition.nc"

# ACE's names for the stepper state embedded in a restart file
_STATE_PREFIX = "_fme_state__"
_CORRECTOR_PREFIX = f"{_STATE_PREFIX}stepper__corrector_state."
DRY_AIR_REFERENCE_VARIABLE = f"{_CORRECTOR_PREFIX}global_dry_air_mass"
_CORRECTOR_PRESENT_VARIABLE = f"{_CORRECTOR_PREFIX}present"
_SCHEMA_ATTRIBUTE = "_fme_schema_version"
_SCHEMA_VERSION = 1


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
        corrector_state: the corrector state the rollouts continue with (a
            restart's dry-air reference), or None to seed it from ``state``.
    """

    state: TensorDict
    times: np.ndarray
    corrector_state: CorrectorState | None = None


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
        corrector_state = _read_corrector_state(ds, path, n_entries, indices)
    return InitialCondition(
        state=state, times=times[indices], corrector_state=corrector_state
    )


def _read_corrector_state(
    ds, path: Path, n_entries: int, indices: list[int]
) -> CorrectorState | None:
    """The embedded dry-air reference of the selected entries, if the file has one."""
    ignored = sorted(
        str(v)
        for v in ds.data_vars
        if str(v).startswith(_STATE_PREFIX)
        and str(v) not in (DRY_AIR_REFERENCE_VARIABLE, _CORRECTOR_PRESENT_VARIABLE)
    )
    if ignored:
        logging.warning(
            "initial condition %s carries stepper state that is not supported "
            "here and is ignored: %s",
            path,
            ignored,
        )
    if DRY_AIR_REFERENCE_VARIABLE not in ds.data_vars:
        return None
    values = np.asarray(ds[DRY_AIR_REFERENCE_VARIABLE].values, dtype=np.float64)
    if values.shape != (n_entries, 1, 1):
        raise ValueError(
            f"{DRY_AIR_REFERENCE_VARIABLE} in {path} has shape {values.shape}; "
            f"expected ({n_entries}, 1, 1), one reference per entry"
        )
    return CorrectorState(global_dry_air_pressure=torch.tensor(values[indices]))


def write_state_file(
    path: Path,
    *,
    state: TensorMapping,
    times: np.ndarray,
    lat: torch.Tensor,
    lon: torch.Tensor,
    variable_metadata: dict[str, dict[str, str]],
    kind: str,
    corrector_state: CorrectorState | None = None,
) -> None:
    """Write ``{name: [sample, lat, lon]}`` at ``times`` as an initial-condition file.

    A ``corrector_state`` with a dry-air reference is embedded as ACE embeds
    it (see the module docstring).
    """
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
        if corrector_state is not None:
            _write_corrector_state(ds, corrector_state)
    tmp.replace(path)


def _write_corrector_state(
    ds: netCDF4.Dataset, corrector_state: CorrectorState
) -> None:
    reference = corrector_state.global_dry_air_pressure
    if reference is None:
        return
    ds.setncattr(_SCHEMA_ATTRIBUTE, _SCHEMA_VERSION)
    # a scalar bool as xarray stores one (int8 with a dtype attribute)
    present = ds.createVariable(_CORRECTOR_PRESENT_VARIABLE, "i1", ())
    present.setncattr("dtype", "bool")
    present.assignValue(1)
    name = DRY_AIR_REFERENCE_VARIABLE
    dims = ("sample", f"{name}_d1", f"{name}_d2")
    for dim in dims[1:]:
        ds.createDimension(dim, 1)
    var = ds.createVariable(name, "f8", dims, fletcher32=True)
    var.units = "Pa"
    var.long_name = (
        "global-mean dry-air surface pressure of the rollout's initial condition"
    )
    var[:] = reference.detach().to("cpu", torch.float64).reshape(-1, 1, 1).numpy()
