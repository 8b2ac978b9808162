"""The rollout diagnostics an ``aggregator`` block asks for, fed chunk by chunk.

Each diagnostic writes ACE's ``<name>_diagnostics.nc`` into the experiment
directory; their scalar metrics join ``metrics.json`` and the logger.
``mean_diagnostics.nc`` holds the per-step global-mean RMSE, bias and drift
of ``RolloutMetricsAggregator``.
"""

import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import xarray as xr

from fme.ace.evaluation.aggregator_config import (
    InferenceAggregatorConfig,
    InferenceEvaluatorAggregatorConfig,
)
from fme.ace.evaluation.calendar_means import AnnualDiagnostic, SeasonalDiagnostic
from fme.ace.evaluation.histogram import HistogramDiagnostic
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.evaluation.spectrum import PowerSpectrumDiagnostic
from fme.ace.evaluation.time_mean import TimeMeanDiagnostic, read_reference_maps
from fme.ace.evaluation.zonal_mean import ZonalMeanDiagnostic
from fme.ace.inference.rollout import RolloutChunk
from fme.core.gridded_ops import LatLonOperations
from fme.core.netcdf_files import checksum_encoding


class Diagnostic(Protocol):
    """One diagnostic of a rollout."""

    file_stem: str

    def get_metrics(self) -> dict[str, float]: ...

    def get_dataset(self) -> xr.Dataset: ...


def _select(variables: list[str] | None, names: list[str], key: str) -> list[str]:
    if variables is None:
        return list(names)
    unknown = [v for v in variables if v not in names]
    if unknown:
        raise ValueError(
            f"aggregator.{key}.variables {unknown} are not predicted; allowed: {names}"
        )
    return list(variables)


class RolloutDiagnostics:
    """Every diagnostic of an aggregator config, recording each chunk.

    Args:
        config: the evaluator's or the inference's aggregator block.
        names: predicted variables.
        ops: area-weighted operations.
        lat: ``[lat]`` latitudes in degrees.
        n_lon: longitudes.
        n_forward_steps: rollout length.
        timestep: time between steps.
        metadata: units and long names of the variables.

    Raises:
        ValueError: when a block names unknown variables or the reference
            file lacks one (before any rollout).
    """

    def __init__(
        self,
        *,
        config: InferenceEvaluatorAggregatorConfig | InferenceAggregatorConfig,
        names: list[str],
        ops: LatLonOperations,
        lat: torch.Tensor,
        n_lon: int,
        n_forward_steps: int,
        timestep: datetime.timedelta,
        metadata: dict[str, dict[str, str]],
    ):
        img_shape = (lat.numel(), n_lon)
        self._names = list(names)
        self._time_mean: TimeMeanDiagnostic | None
        self._zonal: ZonalMeanDiagnostic | None
        self._hist: HistogramDiagnostic | None
        self._spectrum: PowerSpectrumDiagnostic | None
        self._seasonal: SeasonalDiagnostic | None
        self._annual: AnnualDiagnostic | None
        if isinstance(config, InferenceAggregatorConfig):
            reference_path = config.time_mean_reference_data
            reference = (
                read_reference_maps(reference_path, names=names, img_shape=img_shape)
                if reference_path
                else None
            )
            self._time_mean = TimeMeanDiagnostic(
                ops=ops, names=names, reference=reference, metadata=metadata
            )
            self._zonal = self._hist = self._spectrum = None
            self._seasonal = self._annual = None
            return
        time_mean_names = _select(
            config.time_mean_denorm.variables, names, "time_mean_denorm"
        )
        reference = None
        if config.reference_path is not None:
            reference = read_reference_maps(
                config.reference_path, names=time_mean_names, img_shape=img_shape
            )
        self._time_mean = (
            TimeMeanDiagnostic(
                ops=ops, names=time_mean_names, reference=reference, metadata=metadata
            )
            if config.time_mean_denorm.enabled
            else None
        )
        self._zonal = (
            ZonalMeanDiagnostic(
                names=_select(config.zonal_mean.variables, names, "zonal_mean"),
                n_lat=lat.numel(),
                n_forward_steps=n_forward_steps,
                max_size=config.zonal_mean.zonal_mean_max_size,
                metadata=metadata,
            )
            if config.zonal_mean.enabled
            else None
        )
        hist_names = _select(config.histogram.variables, names, "histogram")
        self._hist = (
            HistogramDiagnostic(
                names=hist_names,
                percentile_names=config.histogram.percentile_variables,
            )
            if config.histogram.enabled
            else None
        )
        self._spectrum = (
            PowerSpectrumDiagnostic(
                names=_select(config.power_spectrum.variables, names, "power_spectrum"),
                lat=lat,
                n_lon=n_lon,
            )
            if config.power_spectrum.enabled
            else None
        )
        self._seasonal = (
            SeasonalDiagnostic(
                ops=ops,
                names=_select(config.seasonal.variables, names, "seasonal"),
                timestep=timestep,
            )
            if config.seasonal.enabled
            else None
        )
        self._annual = (
            AnnualDiagnostic(
                ops=ops,
                names=_select(config.annual.variables, names, "annual"),
                timestep=timestep,
            )
            if config.annual.enabled
            else None
        )

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """The enabled diagnostics."""
        candidates = (
            self._time_mean,
            self._zonal,
            self._hist,
            self._spectrum,
            self._seasonal,
            self._annual,
        )
        return [d for d in candidates if d is not None]

    def record(self, chunk: RolloutChunk) -> None:
        """Add a chunk (targets are used when the chunk's data hold them)."""
        prediction = chunk.prediction
        target = (
            {n: chunk.data[n] for n in self._names}
            if chunk.has_target(self._names)
            else None
        )
        if self._time_mean is not None:
            self._time_mean.record(
                prediction=prediction, target=target, time=chunk.time
            )
        if self._zonal is not None:
            self._zonal.record(
                prediction=prediction, target=target, lead_start=chunk.lead_start
            )
        if self._hist is not None:
            self._hist.record(prediction=prediction, target=target)
        if self._spectrum is not None:
            self._spectrum.record(prediction=prediction, target=target)
        if self._seasonal is not None:
            self._seasonal.record(prediction=prediction, target=target, time=chunk.time)
        if self._annual is not None:
            self._annual.record(prediction=prediction, target=target, time=chunk.time)

    def get_metrics(self) -> dict[str, float]:
        """Scalar metrics of every diagnostic."""
        metrics: dict[str, float] = {}
        for diagnostic in self.diagnostics:
            metrics.update(diagnostic.get_metrics())
        return metrics

    def write(self, experiment_dir: Path) -> list[Path]:
        """Write ``<name>_diagnostics.nc`` of every diagnostic with data."""
        paths = []
        for diagnostic in self.diagnostics:
            ds = diagnostic.get_dataset()
            if len(ds.data_vars) == 0:
                continue
            path = Path(experiment_dir) / f"{diagnostic.file_stem}_diagnostics.nc"
            ds.to_netcdf(path, encoding=checksum_encoding(ds))
            paths.append(path)
        return paths


def write_mean_diagnostics(
    aggregator: RolloutMetricsAggregator,
    path: Path,
    *,
    timestep: datetime.timedelta,
) -> Path:
    """Per-step ``weighted_rmse-<var>``, ``weighted_bias-<var>`` and drift curves."""
    curves = aggregator.get_curves()
    n = aggregator.n_lead_times
    rename = {
        "rmse": "weighted_rmse",
        "bias": "weighted_bias",
        "persistence_rmse": "weighted_persistence_rmse",
        "skill": "skill",
        "correction_rms": "correction_rms",
        "global_mean_drift": "global_mean_drift",
        "target_global_mean_drift": "target_global_mean_drift",
    }
    data = {}
    for key, values in curves.items():
        metric, name = key.split("/", 1)
        data[f"{rename.get(metric, metric)}-{name}"] = (
            ("forecast_step",),
            np.asarray(values, dtype=np.float64),
        )
    lead_hours = np.arange(1, n + 1) * timestep.total_seconds() / 3600
    ds = xr.Dataset(data, coords={"forecast_step": np.arange(1, n + 1)})
    ds["lead_hours"] = (("forecast_step",), lead_hours, {"units": "hours"})
    ds.to_netcdf(path, encoding=checksum_encoding(ds))
    return path
