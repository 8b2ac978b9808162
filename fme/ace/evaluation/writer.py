"""Incremental netCDF files of rollout predictions and their targets.

The files use ACE's names and layout, ``autoregressive_predictions.nc`` and
``autoregressive_target.nc``: each variable is ``(sample, time, lat, lon)``
float32, where ``time`` is the lead time (int64 microseconds, CF
``forecast_period``), ``init_time(sample)`` the initialisation time
(``forecast_reference_time``) and ``valid_time(sample, time)`` the time each
value is valid at (``time``), both in microseconds since 1970-01-01. The files are created with their full size up front and filled slice by
slice, so memory stays bounded by one chunk. They are written under a temporary
name and renamed on :meth:`PredictionWriter.close`, so a crashed run never
leaves a half-written file under the final name. Only one process (the root
rank) should write.
"""

import datetime
import os
from pathlib import Path
from types import TracebackType

import netCDF4
import numpy as np
import torch

from fme.core.tensors import TensorMapping

PREDICTION_FILENAME = "autoregressive_predictions.nc"
TARGET_FILENAME = "autoregressive_target.nc"

_TIME_UNITS = "microseconds since 1970-01-01"
_LEAD_UNITS = "microseconds"
_TIME_FILL = np.iinfo(np.int64).min
LEAD_DIM = "time"


def provenance_attributes(kind: str) -> dict[str, str]:
    """Global attributes of the files fme writes: CF version, source, history."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        fme_version = version("fme")
    except PackageNotFoundError:  # running from a source tree
        fme_version = "unknown"
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "Conventions": "CF-1.8",
        "title": f"fme {kind} data file",
        "source": f"fme {fme_version}",
        "history": f"{created} written by fme {fme_version}",
    }


class PredictionWriter:
    """Writes predictions and targets of rollouts to netCDF, chunk by chunk.

    Leads count steps after the initial condition; the files hold leads
    ``first_lead .. first_lead + n_leads - 1`` (pass ``first_lead=0`` to store
    the initial condition as the first lead). Values never written stay NaN.

    Args:
        experiment_dir: directory of the two files; created if missing.
        names: variables to write.
        lat: ``[lat]`` latitudes in degrees north.
        lon: ``[lon]`` longitudes in degrees east.
        n_samples: number of initial conditions (rollouts).
        n_leads: number of lead times in the files.
        timestep: time between consecutive leads.
        variable_metadata: ``{name: {"units": ..., "long_name": ...}}``; every
            entry becomes an attribute of the variable.
        save_prediction: whether to write the prediction file.
        save_target: whether to write the target file.
        first_lead: lead (in steps) of the first entry of the ``lead`` axis.
    """

    def __init__(
        self,
        *,
        experiment_dir: Path,
        names: list[str],
        lat: torch.Tensor,
        lon: torch.Tensor,
        n_samples: int,
        n_leads: int,
        timestep: datetime.timedelta,
        variable_metadata: dict[str, dict[str, str]],
        save_prediction: bool = True,
        save_target: bool = True,
        first_lead: int = 1,
    ):
        if len(names) == 0 or len(set(names)) != len(names):
            raise ValueError(f"names must be non-empty and unique, got {names}")
        if lat.dim() != 1 or lon.dim() != 1:
            raise ValueError(
                f"lat and lon must be 1D, got {tuple(lat.shape)}, {tuple(lon.shape)}"
            )
        if n_samples < 1 or n_leads < 1:
            raise ValueError(
                f"n_samples and n_leads must be >= 1, got {n_samples}, {n_leads}"
            )
        if timestep <= datetime.timedelta(0):
            raise ValueError(f"timestep must be positive, got {timestep}")
        if first_lead < 0:
            raise ValueError(f"first_lead must be >= 0, got {first_lead}")
        self._names = list(names)
        self._n_samples = n_samples
        self._n_leads = n_leads
        self._first_lead = first_lead
        self._img_shape = (lat.shape[0], lon.shape[0])
        self._closed = False
        experiment_dir = Path(experiment_dir)
        filenames = []
        if save_prediction:
            filenames.append(("prediction", PREDICTION_FILENAME))
        if save_target:
            filenames.append(("target", TARGET_FILENAME))
        if filenames:
            experiment_dir.mkdir(parents=True, exist_ok=True)
        self._final_paths: dict[str, Path] = {}
        self._tmp_paths: dict[str, Path] = {}
        self._datasets: dict[str, netCDF4.Dataset] = {}
        step_us = int(timestep / datetime.timedelta(microseconds=1))
        self._lead_us = np.arange(first_lead, first_lead + n_leads, dtype=np.int64) * (
            step_us
        )
        for kind, filename in filenames:
            final = experiment_dir / filename
            tmp = experiment_dir / f".{filename}.tmp"
            self._final_paths[kind] = final
            self._tmp_paths[kind] = tmp
            self._datasets[kind] = self._create(
                path=tmp,
                kind=kind,
                lat=lat.detach().cpu().numpy(),
                lon=lon.detach().cpu().numpy(),
                variable_metadata=variable_metadata,
            )

    @property
    def paths(self) -> dict[str, Path]:
        """Final paths of the files, keyed ``"prediction"`` / ``"target"``."""
        return dict(self._final_paths)

    def _create(
        self,
        *,
        path: Path,
        kind: str,
        lat: np.ndarray,
        lon: np.ndarray,
        variable_metadata: dict[str, dict[str, str]],
    ) -> netCDF4.Dataset:
        ds = netCDF4.Dataset(path, mode="w", format="NETCDF4")
        ds.setncatts(provenance_attributes(f"autoregressive {kind}"))
        ds.createDimension("sample", self._n_samples)
        ds.createDimension(LEAD_DIM, self._n_leads)
        ds.createDimension("lat", self._img_shape[0])
        ds.createDimension("lon", self._img_shape[1])
        for name, values, units, axis in (
            ("lat", lat, "degrees_north", "Y"),
            ("lon", lon, "degrees_east", "X"),
        ):
            var = ds.createVariable(name, "f8", (name,))
            var.units = units
            var.axis = axis
            var.standard_name = "latitude" if name == "lat" else "longitude"
            var[:] = values
        lead = ds.createVariable(LEAD_DIM, "i8", (LEAD_DIM,))
        lead.units = _LEAD_UNITS
        lead.standard_name = "forecast_period"
        lead.long_name = "lead time after initialization"
        # Tells xarray to decode lead as timedelta64 (its own encoding convention).
        lead.setncattr("dtype", "timedelta64[ns]")
        lead[:] = self._lead_us
        for name, dims, standard_name, long_name in (
            (
                "init_time",
                ("sample",),
                "forecast_reference_time",
                "initialization time",
            ),
            ("valid_time", ("sample", LEAD_DIM), "time", "valid time"),
        ):
            var = ds.createVariable(name, "i8", dims, fill_value=_TIME_FILL)
            var.units = _TIME_UNITS
            var.calendar = "proleptic_gregorian"
            var.standard_name = standard_name
            var.long_name = long_name
        for name in self._names:
            var = ds.createVariable(
                name,
                "f4",
                ("sample", LEAD_DIM, "lat", "lon"),
                fill_value=np.float32(np.nan),
                chunksizes=(1, 1, *self._img_shape),
                fletcher32=True,  # per-chunk checksums, checked on read
            )
            var.setncatts(dict(variable_metadata.get(name, {})))
            var.coordinates = "init_time valid_time"
        return ds

    def set_init_times(self, sample_start: int, times: np.ndarray) -> None:
        """Set the initialization times of samples ``sample_start:+len(times)``.

        Args:
            sample_start: index of the first sample.
            times: ``[n]`` ``datetime64`` initialization times.
        """
        self._check_open()
        times = np.asarray(times)
        if times.ndim != 1 or not np.issubdtype(times.dtype, np.datetime64):
            raise ValueError(
                f"times must be a 1D datetime64 array, got {times.dtype} "
                f"with shape {times.shape}"
            )
        self._check_range("sample", sample_start, len(times), 0, self._n_samples)
        micros = (times - np.datetime64(0, "us")) // np.timedelta64(1, "us")
        micros = micros.astype(np.int64)
        samples = slice(sample_start, sample_start + len(times))
        for ds in self._datasets.values():
            ds.variables["init_time"][samples] = micros
            ds.variables["valid_time"][samples, :] = micros[:, None] + self._lead_us

    def append(
        self,
        *,
        sample_start: int,
        lead_start: int,
        prediction: TensorMapping,
        target: TensorMapping,
    ) -> None:
        """Write a chunk of samples and lead times.

        Args:
            sample_start: index of the first sample of the batch.
            lead_start: lead (steps after the initial condition) of the first
                time in the chunk.
            prediction: ``{name: [batch, n_leads_in_chunk, lat, lon]}``.
            target: same layout as ``prediction``.
        """
        self._check_open()
        for kind, data in (("prediction", prediction), ("target", target)):
            if kind not in self._datasets:
                continue
            ds = self._datasets[kind]
            for name in self._names:
                if name not in data:
                    raise ValueError(f"{kind} is missing variable {name!r}")
                array = data[name].detach().to("cpu", torch.float32).numpy()
                if array.ndim != 4 or array.shape[2:] != self._img_shape:
                    raise ValueError(
                        f"{kind}[{name!r}] must be [batch, lead, "
                        f"{self._img_shape[0]}, {self._img_shape[1]}], "
                        f"got {array.shape}"
                    )
                batch, n_leads = array.shape[:2]
                self._check_range("sample", sample_start, batch, 0, self._n_samples)
                self._check_range(
                    "lead", lead_start, n_leads, self._first_lead, self._n_leads
                )
                lead_index = lead_start - self._first_lead
                ds.variables[name][
                    sample_start : sample_start + batch,
                    lead_index : lead_index + n_leads,
                ] = array

    def close(self) -> None:
        """Finish the files and move them to their final names."""
        if self._closed:
            return
        self._closed = True
        for kind, ds in self._datasets.items():
            ds.close()
            os.replace(self._tmp_paths[kind], self._final_paths[kind])

    def abort(self) -> None:
        """Discard the temporary files without touching existing final files."""
        if self._closed:
            return
        self._closed = True
        for kind, ds in self._datasets.items():
            ds.close()
            self._tmp_paths[kind].unlink(missing_ok=True)

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("PredictionWriter is closed")

    @staticmethod
    def _check_range(axis: str, start: int, size: int, first: int, total: int) -> None:
        if start < first or start + size > first + total:
            raise ValueError(
                f"{axis} {start}..{start + size - 1} is outside the file's "
                f"{first}..{first + total - 1}"
            )
