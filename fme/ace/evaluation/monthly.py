"""Monthly means of rollout predictions, in ACE's ``monthly_mean_predictions.nc`` layout.

Dims ``(sample, time, lat, lon)``: ``time`` counts calendar months from the
month of the earliest first predicted time (month 0), ``counts(sample, time)``
how many steps each mean holds, ``valid_time(sample, time)`` the first day of
the month (days since 1970-01-01) and ``init_time(sample)`` the
initialisation. Each chunk of lead times is folded into the stored means
with the stored counts, so memory holds one chunk, never the whole run.
"""

import datetime
import os
from pathlib import Path

import netCDF4
import numpy as np
import torch

from fme.ace.evaluation.writer import provenance_attributes
from fme.core.tensors import TensorMapping

MONTHLY_FILENAME = "monthly_mean_predictions.nc"
_DAYS_UNITS = "days since 1970-01-01 00:00:00"
_MICROS_UNITS = "microseconds since 1970-01-01"


def _month_number(times: np.ndarray) -> np.ndarray:
    """``year * 12 + month - 1`` of ``datetime64`` times."""
    months = times.astype("datetime64[M]").astype(np.int64)  # months since 1970-01
    return months


class MonthlyMeanWriter:
    """Writes monthly means of predictions, chunk by chunk.

    Args:
        path: the netCDF file to write (``monthly_mean_predictions.nc``).
        names: variables to average.
        lat: ``[lat]`` latitudes.
        lon: ``[lon]`` longitudes.
        init_times: ``[n_samples]`` ``datetime64`` initialisation times.
        timestep: time between steps (month 0 is the month of
            ``min(init_times) + timestep``).
        variable_metadata: ``{name: {"units": ..., "long_name": ...}}``.
    """

    def __init__(
        self,
        *,
        path: Path,
        names: list[str],
        lat: torch.Tensor,
        lon: torch.Tensor,
        init_times: np.ndarray,
        timestep: datetime.timedelta,
        variable_metadata: dict[str, dict[str, str]],
    ):
        self._names = list(names)
        self._final = Path(path)
        self._tmp = self._final.with_name(f".{self._final.name}.tmp")
        self._final.parent.mkdir(parents=True, exist_ok=True)
        init_times = np.asarray(init_times).astype("datetime64[ns]")
        first_output = init_times + np.timedelta64(timestep)
        self._month0 = int(_month_number(first_output).min())
        self._n_samples = len(init_times)
        ds = netCDF4.Dataset(self._tmp, "w", format="NETCDF4")
        ds.setncatts(provenance_attributes("monthly mean predictions"))
        ds.createDimension("time", None)
        ds.createDimension("sample", self._n_samples)
        ds.createDimension("lat", lat.numel())
        ds.createDimension("lon", lon.numel())
        month = ds.createVariable("time", "i8", ("time",))
        month.units = "months"
        month.long_name = "months since the first predicted month"
        init = ds.createVariable("init_time", "i8", ("sample",))
        init.units = _MICROS_UNITS
        init.calendar = "proleptic_gregorian"
        init.standard_name = "forecast_reference_time"
        micros = (init_times - np.datetime64(0, "us")) // np.timedelta64(1, "us")
        init[:] = micros.astype(np.int64)
        valid = ds.createVariable("valid_time", "i8", ("sample", "time"))
        valid.units = _DAYS_UNITS
        valid.calendar = "proleptic_gregorian"
        valid.standard_name = "time"
        valid.long_name = "first day of the month"
        ds.createVariable("counts", "i8", ("sample", "time"), fill_value=0)
        for name, values, units in (
            ("lat", lat, "degrees_north"),
            ("lon", lon, "degrees_east"),
        ):
            var = ds.createVariable(name, "f8", (name,))
            var.units = units
            var.standard_name = "latitude" if name == "lat" else "longitude"
            var[:] = values.detach().cpu().numpy()
        for name in self._names:
            var = ds.createVariable(
                name,
                "f4",
                ("sample", "time", "lat", "lon"),
                fill_value=np.nan,
                fletcher32=True,  # per-chunk checksums, checked on read
            )
            var.setncatts(dict(variable_metadata.get(name, {})))
            var.cell_methods = "time: mean"
            var.coordinates = "init_time valid_time"
        ds.set_auto_mask(False)  # a zero count is a count, not a missing value
        self._ds = ds
        self._n_months = 0

    def _grow(self, n_months: int) -> None:
        if n_months <= self._n_months:
            return
        ds = self._ds
        new = np.arange(self._n_months, n_months, dtype=np.int64)
        ds.variables["time"][self._n_months : n_months] = new
        first_days = (
            (new + self._month0).astype("datetime64[M]").astype("datetime64[D]")
        ).astype(np.int64)
        ds.variables["valid_time"][:, self._n_months : n_months] = np.broadcast_to(
            first_days, (self._n_samples, len(new))
        )
        ds.variables["counts"][:, self._n_months : n_months] = 0
        self._n_months = n_months

    def append(
        self, *, sample_start: int, prediction: TensorMapping, time: np.ndarray
    ) -> None:
        """Fold a chunk into the monthly means.

        Args:
            sample_start: index of the chunk's first sample.
            prediction: ``{name: [batch, n_leads, lat, lon]}``.
            time: ``[batch, n_leads]`` ``datetime64`` valid times.
        """
        months = _month_number(np.asarray(time).astype("datetime64[ns]")) - self._month0
        if months.min() < 0:
            raise ValueError("valid times before the first predicted month")
        self._grow(int(months.max()) + 1)
        ds = self._ds
        arrays = {
            n: prediction[n].detach().to("cpu", torch.float64).numpy()
            for n in self._names
        }
        for b in range(months.shape[0]):
            s = sample_start + b
            for m in np.unique(months[b]):
                in_month = months[b] == m
                n_new = int(in_month.sum())
                n_old = int(ds.variables["counts"][s, m])
                for name, values in arrays.items():
                    total = values[b, in_month].sum(axis=0)
                    if n_old:
                        old = np.asarray(ds.variables[name][s, m], dtype=np.float64)
                        total = total + old * n_old
                    ds.variables[name][s, m] = (total / (n_old + n_new)).astype(
                        np.float32
                    )
                ds.variables["counts"][s, m] = n_old + n_new

    def close(self) -> None:
        """Finish the file under its final name."""
        self._ds.close()
        os.replace(self._tmp, self._final)
