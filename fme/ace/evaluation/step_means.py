"""ACE's ``mean_norm`` and ``step_means``: global-mean scores per step and at one step.

Both score with ``RolloutMetricsAggregator``'s definitions (``rmse`` is the
square root of the sample-mean area-weighted squared error, ``bias`` the
sample-mean area-weighted error), so ``mean_step_<k>/weighted_rmse/<var>``
equals ``rmse/<var>/lead_<k>``. "Normalised" fields are ``(x - mean) / std``
with the network's statistics, the same for prediction, target and initial
condition.

- ``mean_norm``: per step in normalised units, ``mean_norm_diagnostics.nc``
  (``weighted_rmse-<var>``, ``weighted_bias-<var>`` over ``forecast_step``)
  and the means over steps ``mean_norm/{rmse,bias}/<var>``.
- ``step_means``: at one step, ``<name>/weighted_rmse/<var>`` and (physical
  units) ``<name>/weighted_bias/<var>``, or (normalised units)
  ``<name>/weighted_rmse/channel_mean``, the plain mean over the channel-mean
  variables; ``<name>_diagnostics.nc`` holds the same scalars.
"""

import numpy as np
import xarray as xr

from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorMapping


class MeanNormDiagnostic:
    """Per-step RMSE and bias of normalised fields (ACE's ``mean_norm``).

    Args:
        ops: area-weighted operations of the grid.
        names: variables.
        n_forward_steps: rollout length.
    """

    file_stem = "mean_norm"

    def __init__(
        self, *, ops: LatLonOperations, names: list[str], n_forward_steps: int
    ):
        self._aggregator = RolloutMetricsAggregator(
            gridded_operations=ops,
            names=names,
            conserved_names=[],
            n_lead_times=n_forward_steps,
        )
        self._recorded = False

    def record(
        self,
        *,
        lead_start: int,
        prediction: TensorMapping,
        target: TensorMapping,
        initial_condition: TensorMapping,
    ) -> None:
        """Add a chunk of normalised ``[batch, n_leads, lat, lon]`` fields."""
        self._aggregator.record(
            lead_start=lead_start,
            prediction=prediction,
            target=target,
            initial_condition=initial_condition,
        )
        self._recorded = True

    def get_metrics(self) -> dict[str, float]:
        """``mean_norm/{rmse,bias}/<var>``: the means over the recorded steps."""
        metrics = self._aggregator.get_metrics()
        return {
            f"mean_norm/{key}": value
            for key, value in metrics.items()
            if key.split("/")[0] in ("rmse", "bias") and "/lead_" not in key
        }

    def get_dataset(self) -> xr.Dataset:
        """``weighted_rmse-<var>`` and ``weighted_bias-<var>`` per forecast step."""
        if not self._recorded:
            return xr.Dataset()
        curves = self._aggregator.get_curves()
        n = self._aggregator.n_lead_times
        data = {}
        for key, values in curves.items():
            metric, name = key.split("/", 1)
            if metric in ("rmse", "bias"):
                data[f"weighted_{metric}-{name}"] = (
                    ("forecast_step",),
                    np.asarray(values, dtype=np.float64),
                )
        return xr.Dataset(data, coords={"forecast_step": np.arange(1, n + 1)})


class StepMeanDiagnostic:
    """RMSE (and bias) at one forecast step (an entry of ACE's ``step_means``).

    Args:
        ops: area-weighted operations of the grid.
        names: every scored variable.
        step: the forecast step (1 is the first prediction).
        name: log prefix and file stem.
        normalized: whether it is fed normalised fields (then it logs the
            channel mean and no bias, as ACE).
        report_names: variables with per-variable logs (None: all).
        channel_mean_names: variables averaged into ``channel_mean`` (None:
            all).
    """

    def __init__(
        self,
        *,
        ops: LatLonOperations,
        names: list[str],
        step: int,
        name: str,
        normalized: bool,
        report_names: list[str] | None = None,
        channel_mean_names: list[str] | None = None,
    ):
        for key, values in (
            ("variables", report_names),
            ("channel_mean_names", channel_mean_names),
        ):
            unknown = [n for n in values or [] if n not in names]
            if unknown:
                raise ValueError(
                    f"aggregator.step_means ({name}) {key} {unknown} are not "
                    f"predicted; allowed: {names}"
                )
        self._aggregator = RolloutMetricsAggregator(
            gridded_operations=ops, names=names, conserved_names=[], n_lead_times=1
        )
        self.step = step
        self.file_stem = name
        self.normalized = normalized
        self._report = list(report_names or names)
        self._channel_mean = list(channel_mean_names or names)
        self._recorded = False

    def record(
        self,
        *,
        lead_start: int,
        prediction: TensorMapping,
        target: TensorMapping,
        initial_condition: TensorMapping,
    ) -> None:
        """Add a chunk; only its lead ``step`` (if it holds it) is scored."""
        n_leads = next(iter(prediction.values())).shape[1]
        index = self.step - lead_start
        if not 0 <= index < n_leads:
            return
        at_step = slice(index, index + 1)
        self._aggregator.record(
            lead_start=1,
            prediction={n: v[:, at_step] for n, v in prediction.items()},
            target={n: v[:, at_step] for n, v in target.items()},
            initial_condition=initial_condition,
        )
        self._recorded = True

    def get_metrics(self) -> dict[str, float]:
        """``<name>/weighted_rmse/<var>`` and bias or channel mean."""
        if not self._recorded:
            return {}
        scores = self._aggregator.get_metrics()
        prefix = self.file_stem
        metrics = {}
        for var in self._report:
            metrics[f"{prefix}/weighted_rmse/{var}"] = scores[f"rmse/{var}"]
            if not self.normalized:
                metrics[f"{prefix}/weighted_bias/{var}"] = scores[f"bias/{var}"]
        if self.normalized:
            values = [scores[f"rmse/{var}"] for var in self._channel_mean]
            metrics[f"{prefix}/weighted_rmse/channel_mean"] = float(np.mean(values))
        return metrics

    def get_dataset(self) -> xr.Dataset:
        """The metrics as scalars ``weighted_rmse-<var>`` (``/`` becomes ``-``)."""
        prefix = f"{self.file_stem}/"
        return xr.Dataset(
            {
                key[len(prefix) :].replace("/", "-"): ((), value)
                for key, value in self.get_metrics().items()
            }
        )
