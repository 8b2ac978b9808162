"""The rollout diagnostics an ``aggregator`` block asks for, fed chunk by chunk.

Each diagnostic writes ACE's ``<name>_diagnostics.nc`` into the experiment
directory; their scalar metrics join ``metrics.json`` and the logger.
``mean_diagnostics.nc`` holds the per-step global-mean RMSE, bias and drift
of ``RolloutMetricsAggregator``.
"""

import datetime
import logging
from collections.abc import Callable
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
from fme.ace.evaluation.step_means import MeanNormDiagnostic, StepMeanDiagnostic
from fme.ace.evaluation.time_mean import TimeMeanDiagnostic, read_reference_maps
from fme.ace.evaluation.zonal_mean import ZonalMeanDiagnostic
from fme.ace.inference.rollout import RolloutChunk
from fme.core.gridded_ops import LatLonOperations
from fme.core.netcdf_files import checksum_encoding
from fme.core.tensors import TensorDict, TensorMapping

ACE_CLIMATE_INDEX_MIN_DURATION = datetime.timedelta(days=730)
"""Runs longer than this get ACE's ENSO / IPO index metrics by default (not here)."""

Normalize = Callable[[TensorMapping], TensorDict]
"""``(x - mean) / std`` with the network's statistics."""


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
        normalize: the network's normalisation, for the normalised metrics
            (``mean_norm``, ``time_mean_norm``, normalised ``step_means``);
            None skips them and the step means (runs without a target).

    Raises:
        ValueError: when a block names unknown variables or the reference
            file lacks one (before any rollout), or a ``strict`` step mean
            lies beyond the rollout.
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
        normalize: Normalize | None = None,
    ):
        img_shape = (lat.numel(), n_lon)
        self._names = list(names)
        self._normalize = normalize
        self._mean_norm: MeanNormDiagnostic | None = None
        self._time_mean_norm: TimeMeanDiagnostic | None = None
        self._step_means: list[StepMeanDiagnostic] = []
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
                report_directional_bias=config.power_spectrum.report_directional_bias,
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
                report_rmse=config.annual.report_rmse,
            )
            if config.annual.enabled
            else None
        )
        if n_forward_steps * timestep > ACE_CLIMATE_INDEX_MIN_DURATION:
            # ACE computes these by default on runs this long; say they are missing
            logging.warning(
                "aggregator: ACE's enso_index, enso_coefficient and ipo_index are "
                "not computed here (not supported); the other diagnostics are"
            )
        if normalize is not None:
            self._build_normalized(config, ops=ops, n_forward_steps=n_forward_steps)

    def _build_normalized(
        self,
        config: InferenceEvaluatorAggregatorConfig,
        *,
        ops: LatLonOperations,
        n_forward_steps: int,
    ) -> None:
        names = self._names
        if config.mean_norm.enabled:
            self._mean_norm = MeanNormDiagnostic(
                ops=ops, names=names, n_forward_steps=n_forward_steps
            )
        if config.time_mean_norm.enabled:
            self._time_mean_norm = TimeMeanDiagnostic(
                ops=ops,
                names=_select(config.time_mean_norm.variables, names, "time_mean_norm"),
                name="time_mean_norm",
                channel_mean_names=config.time_mean_norm.channel_mean_names
                or list(names),
            )
        for entry in config.step_means:
            if not entry.enabled:
                continue
            if entry.step > n_forward_steps:
                message = (
                    f"aggregator.step_means {entry.name}: step {entry.step} is "
                    f"beyond the rollout of {n_forward_steps} steps"
                )
                if entry.strict:
                    raise ValueError(f"{message}; lower step or set strict: false")
                logging.info("%s; skipped (as ACE does)", message)
                continue
            self._step_means.append(
                StepMeanDiagnostic(
                    ops=ops,
                    names=names,
                    step=entry.step,
                    name=str(entry.name),
                    normalized=entry.target == "norm",
                    report_names=entry.variables,
                    channel_mean_names=entry.channel_mean_names,
                )
            )

    @property
    def time_mean_norm(self) -> TimeMeanDiagnostic | None:
        """The normalised time-mean diagnostic (checkpoint selection), if enabled."""
        return self._time_mean_norm

    @property
    def diagnostics(self) -> list[Diagnostic]:
        """The enabled diagnostics."""
        candidates = (
            self._mean_norm,
            self._time_mean_norm,
            *self._step_means,
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
        if target is None:
            return
        for step_mean in self._step_means:
            if not step_mean.normalized:
                step_mean.record(
                    lead_start=chunk.lead_start,
                    prediction=prediction,
                    target=target,
                    initial_condition=chunk.initial_condition,
                )
        self._record_normalized(chunk, target)

    def _record_normalized(self, chunk: RolloutChunk, target: TensorMapping) -> None:
        normalized_steps = [d for d in self._step_means if d.normalized]
        if self._normalize is None or not (
            self._mean_norm or self._time_mean_norm or normalized_steps
        ):
            return
        normalize = self._normalize
        prediction = normalize({n: chunk.prediction[n] for n in self._names})
        target = normalize(target)
        initial = normalize({n: chunk.initial_condition[n] for n in self._names})
        for diagnostic in (self._mean_norm, *normalized_steps):
            if diagnostic is not None:
                diagnostic.record(
                    lead_start=chunk.lead_start,
                    prediction=prediction,
                    target=target,
                    initial_condition=initial,
                )
        if self._time_mean_norm is not None:
            self._time_mean_norm.record(
                prediction=prediction, target=target, time=chunk.time
            )

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
