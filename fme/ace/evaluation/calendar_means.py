"""Seasonal and annual means of a long rollout (``seasonal_diagnostics.nc``, ``annual_diagnostics.nc``).

A season (DJF, MAM, JJA, SON, by each value's valid time) is reported once the
rollout holds at least ``MIN_SEASON_DAYS`` of it per sample; a calendar year
once it holds ``MIN_YEAR_DAYS``. Shorter runs report nothing (the means
would mostly be weather, not climate).
"""

import datetime

import numpy as np
import torch
import xarray as xr

from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorMapping

SEASONS = ("DJF", "MAM", "JJA", "SON")
MIN_SEASON_DAYS = 80.0
MIN_YEAR_DAYS = 360.0
_SEASON_OF_MONTH = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])  # Jan..Dec


def season_index(times: np.ndarray) -> np.ndarray:
    """0..3 (DJF, MAM, JJA, SON) of ``datetime64`` times."""
    months = times.astype("datetime64[M]").astype(np.int64) % 12
    return _SEASON_OF_MONTH[months]


class _CalendarPeriods:
    """What seasonal and annual means share: recording by period, days per sample.

    A subclass says which period each valid time falls in (``_periods``) and
    adds a field to the sums of its periods (``_add``).

    Args:
        ops: area-weighted operations.
        names: variables.
        timestep: time between steps.
    """

    def __init__(
        self, *, ops: LatLonOperations, names: list[str], timestep: datetime.timedelta
    ):
        self._ops = ops
        self._names = list(names)
        self._days_per_step = timestep / datetime.timedelta(days=1)
        self._n_samples = 0

    def record(
        self,
        *,
        prediction: TensorMapping,
        target: TensorMapping | None,
        time: np.ndarray,
    ) -> None:
        """Add ``[batch, n_leads, lat, lon]`` fields valid at ``[batch, n_leads]`` times."""
        periods = self._periods(np.asarray(time))
        self._n_samples = max(self._n_samples, int(periods.shape[0]))
        for kind, data in (("gen", prediction), ("target", target)):
            if data is None:
                continue
            for name in self._names:
                field = data[name].detach().to("cpu", torch.float64)
                self._add(kind, name, field, periods)
        self._count(periods)

    def _periods(self, time: np.ndarray) -> np.ndarray:
        """``[batch, n_leads]`` period of each valid time."""
        raise NotImplementedError

    def _add(self, kind: str, name: str, field: torch.Tensor, periods: np.ndarray):
        """Add ``[batch, n_leads, lat, lon]`` ``field`` to its periods' sums."""
        raise NotImplementedError

    def _count(self, periods: np.ndarray) -> None:
        """Count the recorded steps of each period."""
        raise NotImplementedError

    def _days_per_sample(self, n_steps: np.ndarray) -> np.ndarray:
        """Days that ``n_steps`` recorded steps of all samples cover per sample."""
        return n_steps * self._days_per_step / max(self._n_samples, 1)


class SeasonalDiagnostic(_CalendarPeriods):
    """Seasonal-mean maps of prediction and target.

    Args:
        ops: area-weighted operations.
        names: variables.
        timestep: time between steps.
    """

    file_stem = "seasonal"

    def __init__(
        self, *, ops: LatLonOperations, names: list[str], timestep: datetime.timedelta
    ):
        super().__init__(ops=ops, names=names, timestep=timestep)
        self._sums: dict[str, dict[str, torch.Tensor]] = {"gen": {}, "target": {}}
        self._counts = np.zeros(4)

    def _periods(self, time: np.ndarray) -> np.ndarray:
        return season_index(time)

    def _add(self, kind: str, name: str, field: torch.Tensor, periods: np.ndarray):
        flat = field.reshape(-1, *field.shape[2:])
        sums = self._sums[kind].setdefault(
            name, torch.zeros(4, *field.shape[2:], dtype=torch.float64)
        )
        sums.index_add_(0, torch.as_tensor(periods.reshape(-1)), flat)

    def _count(self, periods: np.ndarray) -> None:
        self._counts += np.bincount(periods.reshape(-1), minlength=4)

    def _complete(self) -> list[int]:
        days = self._days_per_sample(self._counts)
        return [s for s in range(4) if days[s] >= MIN_SEASON_DAYS]

    def maps(self, kind: str) -> dict[str, torch.Tensor]:
        """``{name: [season, lat, lon]}`` of the complete seasons."""
        seasons = self._complete()
        counts = torch.tensor(self._counts[seasons], dtype=torch.float64)[:, None, None]
        return {n: s[seasons] / counts for n, s in self._sums[kind].items()}

    def get_metrics(self) -> dict[str, float]:
        """``seasonal/rmse/<var>/<season>`` and ``seasonal/bias/<var>/<season>``."""
        seasons = self._complete()
        if not seasons or not self._sums["target"]:
            return {}
        gen, target = self.maps("gen"), self.maps("target")
        weights = self._ops.area_weights.to(torch.float64)
        metrics = {}
        for name in self._names:
            for i, s in enumerate(seasons):
                bias = gen[name][i] - target[name][i]
                label = f"{name}/{SEASONS[s]}"
                metrics[f"seasonal/rmse/{label}"] = float(
                    (weights * bias**2).sum().sqrt()
                )
                metrics[f"seasonal/bias/{label}"] = float((weights * bias).sum())
        return metrics

    def get_dataset(self) -> xr.Dataset:
        """``gen_map-<var>`` / ``target_map-<var>`` over ``(season, lat, lon)``."""
        seasons = self._complete()
        if not seasons:
            return xr.Dataset()
        data = {}
        for kind in ("gen", "target"):
            for name, values in self.maps(kind).items():
                data[f"{kind}_map-{name}"] = (("season", "lat", "lon"), values.numpy())
        return xr.Dataset(data, coords={"season": [SEASONS[s] for s in seasons]})


class AnnualDiagnostic(_CalendarPeriods):
    """Global means of every complete calendar year.

    Args:
        ops: area-weighted operations.
        names: variables.
        timestep: time between steps.
        report_rmse: log ``annual/rmse/<var>`` (ACE's ``report_rmse``).
    """

    file_stem = "annual"

    def __init__(
        self,
        *,
        ops: LatLonOperations,
        names: list[str],
        timestep: datetime.timedelta,
        report_rmse: bool = True,
    ):
        super().__init__(ops=ops, names=names, timestep=timestep)
        self._report_rmse = report_rmse
        self._sums: dict[str, dict[int, dict[str, float]]] = {"gen": {}, "target": {}}
        self._counts: dict[int, int] = {}

    def _periods(self, time: np.ndarray) -> np.ndarray:
        return time.astype("datetime64[Y]").astype(np.int64) + 1970

    def _add(self, kind: str, name: str, field: torch.Tensor, periods: np.ndarray):
        gm = self._ops.area_weighted_mean(field).numpy()
        for year in np.unique(periods):
            total = float(gm[periods == year].sum())
            per_year = self._sums[kind].setdefault(int(year), {})
            per_year[name] = per_year.get(name, 0.0) + total

    def _count(self, periods: np.ndarray) -> None:
        for year in np.unique(periods):
            n = int((periods == year).sum())
            self._counts[int(year)] = self._counts.get(int(year), 0) + n

    def complete_years(self) -> list[int]:
        """Years the rollout covers for at least ``MIN_YEAR_DAYS`` per sample."""
        return sorted(
            y
            for y, n in self._counts.items()
            if self._days_per_sample(np.asarray(n)) >= MIN_YEAR_DAYS
        )

    def means(self, kind: str) -> dict[str, np.ndarray]:
        """``{name: [year]}`` annual global means of the complete years."""
        years = self.complete_years()
        return {
            name: np.array([self._sums[kind][y][name] / self._counts[y] for y in years])
            for name in self._names
            if years and self._sums[kind]
        }

    def get_metrics(self) -> dict[str, float]:
        """``annual/rmse/<var>``: RMSE of the annual global means against the target."""
        if not (self._report_rmse and self.complete_years() and self._sums["target"]):
            return {}
        gen, target = self.means("gen"), self.means("target")
        return {
            f"annual/rmse/{n}": float(np.sqrt(np.mean((gen[n] - target[n]) ** 2)))
            for n in self._names
        }

    def get_dataset(self) -> xr.Dataset:
        """``<var>`` over ``(source, year)``, source ``prediction`` / ``target``."""
        years = self.complete_years()
        if not years:
            return xr.Dataset()
        kinds = [k for k in ("gen", "target") if self._sums[k]]
        data = {
            name: (
                ("source", "year"),
                np.stack([self.means(k)[name] for k in kinds]),
            )
            for name in self._names
        }
        sources = ["prediction" if k == "gen" else "target" for k in kinds]
        return xr.Dataset(data, coords={"source": sources, "year": years})
