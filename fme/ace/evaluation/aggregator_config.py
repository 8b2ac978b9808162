"""ACE's ``aggregator`` blocks: which rollout diagnostics to compute.

Keys and defaults follow ACE's ``InferenceEvaluatorAggregatorConfig`` (the
evaluator and inline inference) and ``InferenceAggregatorConfig`` (inference
without target). Metrics this project computes: ``mean_denorm`` and ``mean_norm``
(global-mean RMSE and bias per step, in physical units and in the network's
normalised units), ``step_means`` (the same at one step),
``time_mean_denorm`` (time-mean maps and bias, against
``time_mean_reference_data`` too), ``time_mean_norm`` (the normalised
time-mean RMSE and its ``channel_mean``, which selects
``best_inference_ckpt.tar``), ``zonal_mean``, ``histogram``,
``power_spectrum``, ``seasonal`` and ``annual``. ``ensembles`` need more than
one member per initial condition; with one (the only setting here) ACE skips
them too. ACE metrics not computed here
(``video``, ``enso_index``, ``ipo_index``, ``trend`` ...) are refused when a
config turns them on; left at ACE's defaults they are skipped, as ACE skips a
metric whose requirements are not met.
"""

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

_TARGETS = ("denorm", "norm")


def _check_known_target(target: str, block: str) -> None:
    if target not in _TARGETS:
        raise ValueError(
            f"aggregator {block} target {target!r} is unknown; allowed: "
            f"{list(_TARGETS)}"
        )


def _check_default_name(name: str | None, default: str, block: str) -> None:
    """Refuse a ``name`` other than ACE's default (outputs keep their names here)."""
    if name not in (None, default):
        raise ValueError(
            f"not supported here: aggregator.{block}.name {name!r} (the outputs "
            f"are named {default!r}); remove the key"
        )


def _check_target(value: str, key: str, expected: str) -> None:
    if value != expected:
        raise ValueError(
            f"aggregator.{key}.target must be {expected!r} (as in ACE), got {value!r}"
        )


@dataclasses.dataclass
class MeanMetricConfig:
    """ACE's ``mean_denorm`` / ``mean_norm``: global-mean series per step.

    ``mean_denorm`` is ``mean_diagnostics.nc``; ``mean_norm`` writes the same
    RMSE and bias of the fields normalised with the network's statistics
    (``(x - mean) / std``) to ``mean_norm_diagnostics.nc`` and logs
    ``mean_norm/rmse/<var>`` and ``mean_norm/bias/<var>``.

    Attributes:
        variables: not supported here for ``mean_norm`` (must be null;
            ``mean_denorm`` covers every predicted variable, as the
            skill metrics need them).
        name: only ACE's default (``mean`` / ``mean_norm``) is supported.
        target: ``denorm`` (physical units) or ``norm``.
        enabled: compute it (``mean_denorm`` is always computed: the skill and
            drift metrics come from it).
        strict: accepted for ACE configs (the metric cannot be skipped).
    """

    variables: list[str] | None = None
    name: str | None = None
    target: str = "denorm"
    enabled: bool = True
    strict: bool = False

    def __post_init__(self):
        _check_known_target(self.target, "mean")
        if self.variables is not None:
            raise ValueError(
                "not supported here: aggregator.mean_denorm/mean_norm.variables "
                "(every predicted variable is scored); remove the key"
            )
        default = {"denorm": "mean", "norm": "mean_norm"}[self.target]
        _check_default_name(self.name, default, default)


@dataclasses.dataclass
class StepMeanMetricConfig:
    """One entry of ACE's ``step_means``: RMSE (and bias) at one forecast step.

    Logged as ``<name>/weighted_rmse/<var>`` (and ``weighted_bias`` for
    ``denorm``; ``weighted_rmse/channel_mean`` over the predicted variables for
    ``norm``) and written to ``<name>_diagnostics.nc``. A step beyond the
    rollout is skipped, as in ACE, unless ``strict``.

    Attributes:
        step: forecast step (1 is the first prediction).
        variables: restrict the per-variable logs to these (null: all).
        name: log prefix; ``mean_step_<step>`` (``..._norm`` for ``norm``).
        target: ``denorm`` or ``norm``.
        channel_mean_names: variables averaged into ``channel_mean`` (null:
            all predicted variables).
        enabled: compute it.
        strict: refuse a run shorter than ``step`` instead of skipping.
    """

    step: int
    variables: list[str] | None = None
    name: str | None = None
    target: str = "denorm"
    channel_mean_names: list[str] | None = None
    enabled: bool = True
    strict: bool = False

    def __post_init__(self):
        if self.step < 1:
            raise ValueError(
                f"aggregator.step_means step must be >= 1, got {self.step}"
            )
        _check_known_target(self.target, "step_means")
        if self.name is None:
            base = f"mean_step_{self.step}"
            self.name = f"{base}_norm" if self.target == "norm" else base


@dataclasses.dataclass
class EnsembleMetricConfig:
    """One entry of ACE's ``ensembles`` (CRPS, spread-skill at one step).

    They need more than one member per initial condition; runs here have one
    (``n_ensemble_per_ic: 1``), where ACE skips them as well, so an entry is
    accepted and computes nothing.

    Attributes:
        step: forecast step.
        name: log prefix.
        log_mean_maps: as in ACE.
        enabled: as in ACE.
        strict: as in ACE.
        target: ``denorm`` or ``norm``.
        channel_mean_names: as in ACE.
    """

    step: int = 20
    name: str | None = None
    log_mean_maps: bool = False
    enabled: bool = True
    strict: bool = False
    target: str = "denorm"
    channel_mean_names: list[str] | None = None

    def __post_init__(self):
        _check_known_target(self.target, "ensembles")


@dataclasses.dataclass
class TimeMeanMetricConfig:
    """ACE's ``time_mean_denorm`` / ``time_mean_norm``.

    ``time_mean_norm`` scores the time mean of the fields normalised with the
    network's statistics: ``time_mean_norm/rmse/<var>`` and
    ``time_mean_norm/rmse/channel_mean`` (the mean over ``channel_mean_names``,
    by default every predicted variable), written to
    ``time_mean_norm_diagnostics.nc``.

    Attributes:
        variables: restrict to these variables (null: all).
        name: only ACE's default (``time_mean`` / ``time_mean_norm``) is
            supported.
        target: ``denorm`` or ``norm``.
        reference_data: a file of time-mean reference maps (as
            ``time_mean_reference_data``); ``denorm`` only.
        channel_mean_names: ``norm``: the variables averaged into
            ``rmse/channel_mean`` (null: all predicted variables).
        enabled: compute it.
        strict: accepted for ACE configs (the metric cannot be skipped).
    """

    variables: list[str] | None = None
    name: str | None = None
    target: str = "denorm"
    reference_data: str | None = None
    channel_mean_names: list[str] | None = None
    enabled: bool = True
    strict: bool = False

    def __post_init__(self):
        _check_known_target(self.target, "time-mean")
        default = {"denorm": "time_mean", "norm": "time_mean_norm"}[self.target]
        _check_default_name(self.name, default, default)
        if self.target == "norm" and self.reference_data is not None:
            raise ValueError(
                "not supported here: aggregator.time_mean_norm.reference_data "
                "(compare with reference maps through time_mean_denorm or "
                "time_mean_reference_data)"
            )


@dataclasses.dataclass
class MapMetricConfig:
    """The keys every ACE map-diagnostic block shares.

    Attributes:
        variables: restrict to these variables (null: all).
        name: the block's log prefix and file stem; only ACE's default name
            is supported here (other names are refused).
        enabled: compute it.
        strict: accepted for ACE configs (these diagnostics are never skipped
            for unmet requirements).
    """

    default_name: ClassVar[str] = ""

    variables: list[str] | None = None
    name: str | None = None
    enabled: bool = True
    strict: bool = False

    def __post_init__(self):
        _check_default_name(self.name, self.default_name, self.default_name)
        self.name = self.default_name


@dataclasses.dataclass
class ZonalMeanMetricConfig(MapMetricConfig):
    """ACE's ``zonal_mean``: zonal means per lead (binned to at most ``zonal_mean_max_size``).

    Attributes:
        zonal_mean_max_size: most lead bins kept (longer runs average
            consecutive leads into bins).
    """

    default_name: ClassVar[str] = "zonal_mean"

    zonal_mean_max_size: int = 4096


@dataclasses.dataclass
class HistogramMetricConfig(MapMetricConfig):
    """ACE's ``histogram`` (off by default, as in ACE).

    Attributes:
        percentile_variables: variables whose 99.9999th percentile is logged
            (null: all).
    """

    default_name: ClassVar[str] = "histogram"

    enabled: bool = False
    strict: bool = True
    percentile_variables: list[str] | None = None


@dataclasses.dataclass
class PowerSpectrumMetricConfig(MapMetricConfig):
    """ACE's ``power_spectrum``: spherical power spectrum per degree.

    Attributes:
        report_directional_bias: also log ``positive_norm_bias`` and
            ``negative_norm_bias``.
        plot_variables: not supported here (must be null: spectra are
            written to ``power_spectrum_diagnostics.nc``, not plotted).
    """

    default_name: ClassVar[str] = "power_spectrum"

    report_directional_bias: bool = True
    plot_variables: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.plot_variables is not None:
            raise ValueError(
                "not supported here: aggregator.power_spectrum.plot_variables "
                "(spectra are not plotted; they are in "
                "power_spectrum_diagnostics.nc); remove the key"
            )


@dataclasses.dataclass
class SeasonalMetricConfig(MapMetricConfig):
    """ACE's ``seasonal``: DJF/MAM/JJA/SON means (off by default, as in ACE)."""

    default_name: ClassVar[str] = "seasonal"

    enabled: bool = False
    strict: bool = True


@dataclasses.dataclass
class AnnualMetricConfig(MapMetricConfig):
    """ACE's ``annual``: global means of each complete calendar year.

    Attributes:
        reference_data: not supported here (must be null).
        report_crps: as in ACE (one member per initial condition: there is
            no CRPS to report, in ACE either).
        report_rmse: log the RMSE of the annual means.
    """

    default_name: ClassVar[str] = "annual"

    reference_data: str | None = None
    report_crps: bool = True
    report_rmse: bool = True

    def __post_init__(self):
        super().__post_init__()
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
        mean_norm: the same in normalised units.
        step_means: RMSE (and bias) at chosen steps; ACE's default is step
            20 in physical and in normalised units.
        ensembles: ensemble metrics (one member here: nothing to compute,
            as in ACE).
        power_spectrum: spherical power spectrum.
        zonal_mean: zonal means per lead.
        time_mean_denorm: time-mean maps and bias.
        time_mean_norm: normalised time-mean RMSE and its channel mean.
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
    step_means: list[StepMeanMetricConfig] = dataclasses.field(
        default_factory=lambda: [
            StepMeanMetricConfig(step=20, target="denorm"),
            StepMeanMetricConfig(step=20, target="norm"),
        ]
    )
    ensembles: list[EnsembleMetricConfig] = dataclasses.field(
        default_factory=lambda: [EnsembleMetricConfig(step=20)]
    )
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
        _check_target(self.mean_denorm.target, "mean_denorm", "denorm")
        _check_target(self.mean_norm.target, "mean_norm", "norm")
        _check_target(self.time_mean_denorm.target, "time_mean_denorm", "denorm")
        _check_target(self.time_mean_norm.target, "time_mean_norm", "norm")
        if not self.mean_denorm.enabled:
            raise ValueError(
                "not supported here: aggregator.mean_denorm.enabled: false (the "
                "skill and drift metrics are computed from it)"
            )
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
