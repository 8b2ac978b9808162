"""ACE's ``aggregator`` blocks: which rollout diagnostics to compute.

Keys and defaults follow ACE's ``InferenceEvaluatorAggregatorConfig`` (the
evaluator and inline inference) and ``InferenceAggregatorConfig`` (inference
without target). Metrics this project computes: ``mean`` (global-mean RMSE
and bias per step), ``time_mean_denorm`` (time-mean maps and bias, against
``time_mean_reference_data`` too), ``zonal_mean``, ``histogram``,
``power_spectrum``, ``seasonal`` and ``annual``. ACE metrics not computed here
(``video``, ``enso_index``, ``ipo_index``, ``trend`` ...) are refused when a
config turns them on; left at ACE's defaults they are skipped, as ACE skips a
metric whose requirements are not met.
"""

import dataclasses
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class MeanMetricConfig:
    """ACE's ``mean_denorm`` / ``mean_norm``: global-mean series per step.

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix (``mean`` or ``mean_norm``).
        target: ``denorm`` (physical units) or ``norm``.
        enabled: compute it.
        strict: accepted for ACE configs.
    """

    variables: list[str] | None = None
    name: str | None = None
    target: str = "denorm"
    enabled: bool = True
    strict: bool = False


@dataclasses.dataclass
class TimeMeanMetricConfig:
    """ACE's ``time_mean_denorm`` / ``time_mean_norm``.

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix (``time_mean``).
        target: ``denorm`` or ``norm`` (only ``denorm`` is computed here).
        reference_data: a file of time-mean reference maps (as
            ``time_mean_reference_data``).
        channel_mean_names: accepted for ACE configs.
        enabled: compute it.
        strict: accepted for ACE configs.
    """

    variables: list[str] | None = None
    name: str | None = None
    target: str = "denorm"
    reference_data: str | None = None
    channel_mean_names: list[str] | None = None
    enabled: bool = True
    strict: bool = False


@dataclasses.dataclass
class ZonalMeanMetricConfig:
    """ACE's ``zonal_mean``: zonal means per lead (binned to at most ``zonal_mean_max_size``).

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix.
        zonal_mean_max_size: most lead bins kept (longer runs average
            consecutive leads into bins).
        enabled: compute it.
        strict: accepted for ACE configs.
    """

    variables: list[str] | None = None
    name: str = "zonal_mean"
    zonal_mean_max_size: int = 4096
    enabled: bool = True
    strict: bool = False


@dataclasses.dataclass
class HistogramMetricConfig:
    """ACE's ``histogram`` (off by default, as in ACE).

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix.
        enabled: compute it.
        strict: accepted for ACE configs.
        percentile_variables: variables whose 99.9999th percentile is logged
            (null: all).
    """

    variables: list[str] | None = None
    name: str = "histogram"
    enabled: bool = False
    strict: bool = True
    percentile_variables: list[str] | None = None


@dataclasses.dataclass
class PowerSpectrumMetricConfig:
    """ACE's ``power_spectrum``: spherical power spectrum per degree.

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix.
        enabled: compute it.
        strict: accepted for ACE configs.
        report_directional_bias: also log positive and negative bias parts.
        plot_variables: variables plotted (null: all).
    """

    variables: list[str] | None = None
    name: str = "power_spectrum"
    enabled: bool = True
    strict: bool = False
    report_directional_bias: bool = True
    plot_variables: list[str] | None = None


@dataclasses.dataclass
class SeasonalMetricConfig:
    """ACE's ``seasonal``: DJF/MAM/JJA/SON means (off by default, as in ACE).

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix.
        enabled: compute it.
        strict: accepted for ACE configs.
    """

    variables: list[str] | None = None
    name: str = "seasonal"
    enabled: bool = False
    strict: bool = True


@dataclasses.dataclass
class AnnualMetricConfig:
    """ACE's ``annual``: global means of each complete calendar year.

    Attributes:
        variables: restrict to these variables (null: all).
        name: log prefix.
        reference_data: not supported here (must be null).
        enabled: compute it (years the run covers completely only).
        strict: accepted for ACE configs.
        report_crps: accepted for ACE configs (one member: no CRPS).
        report_rmse: log the RMSE of the annual means.
    """

    variables: list[str] | None = None
    name: str = "annual"
    reference_data: str | None = None
    enabled: bool = True
    strict: bool = False
    report_crps: bool = True
    report_rmse: bool = True

    def __post_init__(self):
        if self.reference_data is not None:
            raise ValueError("not supported here: aggregator.annual.reference_data")


_UNSUPPORTED = (
    "video",
    "enso_index",
    "enso_coefficient",
    "ipo_index",
    "trend",
    "near_zero_fraction",
    "step_diagnostics",
)


def _refuse_enabled(block: dict[str, Any] | None, key: str) -> None:
    if block is not None and block.get("enabled", False):
        raise ValueError(
            f"not supported here: aggregator.{key} (set enabled: false or remove it)"
        )


def _check_reference_path(path: str | None, key: str) -> None:
    if path is not None and not Path(path).is_file():
        raise ValueError(
            f"aggregator.{key} {path!r} is not a file; point it at the netCDF of "
            "reference time-mean maps or remove the key"
        )


@dataclasses.dataclass
class InferenceEvaluatorAggregatorConfig:
    """ACE's evaluator / inline-inference ``aggregator``.

    Attributes:
        mean_denorm: global-mean RMSE and bias per step.
        mean_norm: accepted for ACE configs (not computed here).
        step_means: accepted for ACE configs (not computed here).
        ensembles: accepted for ACE configs (one member: nothing to compute).
        power_spectrum: spherical power spectrum.
        zonal_mean: zonal means per lead.
        time_mean_denorm: time-mean maps and bias.
        time_mean_norm: accepted for ACE configs (not computed here).
        video, enso_index, enso_coefficient, ipo_index, trend,
            near_zero_fraction, step_diagnostics: not supported here when
            enabled.
        histogram: value histograms of prediction and target.
        seasonal: seasonal means.
        annual: annual global means.
        monthly_reference_data: not supported here (must be null).
        time_mean_reference_data: time-mean reference maps (a netCDF with
            ``(lat, lon)`` variables); the prediction's time mean is compared
            with them.
    """

    mean_denorm: MeanMetricConfig = dataclasses.field(default_factory=MeanMetricConfig)
    mean_norm: MeanMetricConfig = dataclasses.field(
        default_factory=lambda: MeanMetricConfig(target="norm")
    )
    step_means: list[dict[str, Any]] | None = None
    ensembles: list[dict[str, Any]] | None = None
    power_spectrum: PowerSpectrumMetricConfig = dataclasses.field(
        default_factory=PowerSpectrumMetricConfig
    )
    zonal_mean: ZonalMeanMetricConfig = dataclasses.field(
        default_factory=ZonalMeanMetricConfig
    )
    time_mean_denorm: TimeMeanMetricConfig = dataclasses.field(
        default_factory=TimeMeanMetricConfig
    )
    time_mean_norm: TimeMeanMetricConfig = dataclasses.field(
        default_factory=lambda: TimeMeanMetricConfig(target="norm")
    )
    video: dict[str, Any] | None = None
    histogram: HistogramMetricConfig = dataclasses.field(
        default_factory=HistogramMetricConfig
    )
    seasonal: SeasonalMetricConfig = dataclasses.field(
        default_factory=SeasonalMetricConfig
    )
    annual: AnnualMetricConfig = dataclasses.field(default_factory=AnnualMetricConfig)
    enso_index: dict[str, Any] | None = None
    enso_coefficient: dict[str, Any] | None = None
    ipo_index: dict[str, Any] | None = None
    trend: dict[str, Any] | None = None
    near_zero_fraction: dict[str, Any] | None = None
    monthly_reference_data: str | None = None
    time_mean_reference_data: str | None = None
    step_diagnostics: dict[str, Any] | None = None

    def __post_init__(self):
        for key in _UNSUPPORTED:
            _refuse_enabled(getattr(self, key), key)
        if self.monthly_reference_data is not None:
            raise ValueError("not supported here: aggregator.monthly_reference_data")
        if self.mean_denorm.target != "denorm":
            raise ValueError("aggregator.mean_denorm.target must be denorm")
        _check_reference_path(self.time_mean_reference_data, "time_mean_reference_data")
        _check_reference_path(
            self.time_mean_denorm.reference_data, "time_mean_denorm.reference_data"
        )

    @property
    def reference_path(self) -> str | None:
        """The time-mean reference file, from either key."""
        return self.time_mean_denorm.reference_data or self.time_mean_reference_data


@dataclasses.dataclass
class InferenceAggregatorConfig:
    """ACE's inference (no target) ``aggregator``.

    Attributes:
        time_mean_reference_data: time-mean reference maps to compare the
            prediction's time mean with.
        log_global_mean_time_series: log the global mean of every variable
            per step.
        step_diagnostics: not supported here when enabled.
    """

    time_mean_reference_data: str | None = None
    log_global_mean_time_series: bool = True
    step_diagnostics: dict[str, Any] | None = None

    def __post_init__(self):
        _refuse_enabled(self.step_diagnostics, "step_diagnostics")
        _check_reference_path(self.time_mean_reference_data, "time_mean_reference_data")
