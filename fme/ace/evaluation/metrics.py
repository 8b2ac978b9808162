"""Skill and conservation metrics of autoregressive rollouts.

Lead times count steps after the initial condition: lead 0 is the initial
condition, the forecast covers leads ``1 .. n_lead_times``. Rollouts of several
batches of initial conditions may be recorded in chunks of lead times; the
aggregator keeps sums and counts (never means of means), so recording the same
samples in any split of batches and chunks gives the same metrics, and a
distributed job sums the states over ranks before dividing.

Definitions (``gm`` is the area-weighted global mean, ``⟨·⟩`` the mean over
samples, ``x̂`` the prediction, ``x`` the target, ``x₀`` the initial condition):

- ``rmse = sqrt(⟨gm((x̂ - x)²)⟩)``: the square root of the sample-mean of the
  area-weighted mean squared error (the pooled MSE), not the mean of per-sample
  RMSEs.
- ``persistence_rmse``: the same with the initial condition as the forecast.
- ``bias = ⟨gm(x̂ - x)⟩``.
- ``skill = 1 - rmse / persistence_rmse`` (1 for a perfect forecast, 0 for
  persistence, negative when worse than persistence; NaN when persistence is
  exact).
- ``global_mean_drift = ⟨gm(x̂) - gm(x₀)⟩`` for conserved quantities (variables
  whose global mean the corrector conserves, and derived fields such as the
  dry-air mass and total water path), and
  ``target_global_mean_drift = ⟨gm(x) - gm(x₀)⟩`` for the drift of the data.
- ``correction_rms = sqrt(⟨gm(c²)⟩)`` with ``c = output - uncorrected`` the
  correction the corrector applied: how much the emulator leans on it.
"""

from collections.abc import Callable, Mapping

import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorMapping

DerivedQuantity = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
"""A field computed from the state, ``{name: [..., lat, lon]} -> [..., lat, lon]``."""

_PER_NAME_SUMS = ("mse", "persistence_mse", "bias", "correction_ms")
_PER_CONSERVED_SUMS = ("global_mean_drift", "target_global_mean_drift")
_COUNTS = ("count", "correction_count")


class RolloutMetricsAggregator:
    """Accumulates rollout skill and conservation over batches and lead chunks.

    Args:
        gridded_operations: area-weighted operations of the grid.
        names: variables to evaluate; every recorded prediction and target
            must contain them.
        conserved_names: subset of ``names`` whose global-mean drift is tracked.
        n_lead_times: number of forecast lead times (leads ``1 .. n_lead_times``).
        device: where the sums live; on GPU jobs pass the device the
            distributed reduction runs on.
        derived_quantities: ``{name: function of the state}`` fields whose
            global-mean drift is tracked too (e.g. the dry-air mass); their
            names follow ``conserved_names`` in the drift metrics.
    """

    def __init__(
        self,
        *,
        gridded_operations: LatLonOperations,
        names: list[str],
        conserved_names: list[str],
        n_lead_times: int,
        device: torch.device | str = "cpu",
        derived_quantities: Mapping[str, DerivedQuantity] | None = None,
    ):
        if len(names) == 0:
            raise ValueError("names must contain at least one variable name")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        unknown = [n for n in conserved_names if n not in names]
        if unknown:
            raise ValueError(
                f"conserved_names {unknown} are not in names; allowed values: {names}"
            )
        if n_lead_times < 1:
            raise ValueError(f"n_lead_times must be >= 1, got {n_lead_times}")
        self._ops = gridded_operations
        self._names = list(names)
        self._derived = dict(derived_quantities or {})
        clash = [n for n in self._derived if n in conserved_names]
        if clash:
            raise ValueError(f"derived quantities {clash} clash with conserved_names")
        self._conserved_names = list(dict.fromkeys(conserved_names)) + list(
            self._derived
        )
        self._n_lead_times = n_lead_times
        self._device = torch.device(device)
        # Renormalised in float64 so a constant field has exactly its value as mean.
        weights = gridded_operations.area_weights.to(torch.float64)
        self._area_weights = weights / weights.sum()
        self._sums = self._zero_state()

    @property
    def names(self) -> list[str]:
        """The evaluated variables, in order."""
        return list(self._names)

    @property
    def conserved_names(self) -> list[str]:
        """The variables whose global-mean drift is tracked."""
        return list(self._conserved_names)

    @property
    def n_lead_times(self) -> int:
        """Number of forecast lead times."""
        return self._n_lead_times

    def _zero_state(self) -> dict[str, torch.Tensor]:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=self._device)

        n_names, n_conserved = len(self._names), len(self._conserved_names)
        state = {key: zeros(n_names, self._n_lead_times) for key in _PER_NAME_SUMS}
        for key in _PER_CONSERVED_SUMS:
            state[key] = zeros(n_conserved, self._n_lead_times)
        for key in _COUNTS:
            state[key] = zeros(self._n_lead_times)
        return state

    @torch.no_grad()
    def record(
        self,
        *,
        lead_start: int,
        prediction: TensorMapping,
        target: TensorMapping,
        initial_condition: TensorMapping,
        corrections: TensorMapping | None = None,
    ) -> None:
        """Add a chunk of lead times of a batch of rollouts.

        Args:
            lead_start: lead (steps after the initial condition, >= 1) of the
                first time in the chunk.
            prediction: ``{name: [batch, n_leads_in_chunk, lat, lon]}``.
            target: same layout as ``prediction``.
            initial_condition: ``{name: [batch, lat, lon]}``, the state at lead
                0 (persistence forecast and drift reference).
            corrections: ``{name: [batch, n_leads_in_chunk, lat, lon]}`` of
                ``output - uncorrected``, or ``None`` when no corrector ran.
                When given, a variable of ``names`` absent from it counts as
                uncorrected (zero correction); extra names are ignored.
        """
        batch_size, n_leads = self._check_chunk(
            lead_start=lead_start,
            prediction=prediction,
            target=target,
            initial_condition=initial_condition,
            corrections=corrections,
        )
        leads = slice(lead_start - 1, lead_start - 1 + n_leads)
        gm = self._global_mean
        for i, name in enumerate(self._names):
            pred = prediction[name].to(torch.float64)
            tgt = target[name].to(torch.float64)
            ic = initial_condition[name].to(torch.float64)[:, None]
            per_sample = {
                "mse": gm((pred - tgt) ** 2),
                "persistence_mse": gm((ic - tgt) ** 2),
                "bias": gm(pred - tgt),
            }
            if corrections is not None and name in corrections:
                correction = corrections[name].to(torch.float64)
                per_sample["correction_ms"] = gm(correction**2)
            for key, value in per_sample.items():
                self._sums[key][i, leads] += value.sum(dim=0).to(self._device)
        for j, name in enumerate(self._conserved_names):
            ic_gm = gm(self._field(name, initial_condition))[:, None]
            pred_gm = gm(self._field(name, prediction))
            tgt_gm = gm(self._field(name, target))
            for key, value in (
                ("global_mean_drift", pred_gm - ic_gm),
                ("target_global_mean_drift", tgt_gm - ic_gm),
            ):
                self._sums[key][j, leads] += value.sum(dim=0).to(self._device)
        self._sums["count"][leads] += batch_size
        if corrections is not None:
            self._sums["correction_count"][leads] += batch_size

    def _field(self, name: str, data: TensorMapping) -> torch.Tensor:
        """A conserved variable or derived quantity of ``data``, in float64."""
        if name in self._derived:
            return self._derived[name](
                {k: v.to(torch.float64) for k, v in data.items()}
            ).to(torch.float64)
        return data[name].to(torch.float64)

    def _global_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Area-weighted mean over the last two dims, in float64."""
        if self._area_weights.device != x.device:
            self._area_weights = self._area_weights.to(x.device)
        return (x * self._area_weights).sum(dim=(-2, -1))

    def _check_chunk(
        self,
        *,
        lead_start: int,
        prediction: TensorMapping,
        target: TensorMapping,
        initial_condition: TensorMapping,
        corrections: TensorMapping | None,
    ) -> tuple[int, int]:
        for label, mapping in (
            ("prediction", prediction),
            ("target", target),
            ("initial_condition", initial_condition),
        ):
            missing = [n for n in self._names if n not in mapping]
            if missing:
                raise ValueError(f"{label} is missing variables {missing}")
        shape = prediction[self._names[0]].shape
        if len(shape) != 4:
            raise ValueError(
                "prediction tensors must be [batch, lead, lat, lon], "
                f"got {tuple(shape)}"
            )
        for name in self._names:
            for label, tensor in (
                ("prediction", prediction[name]),
                ("target", target[name]),
            ):
                if tensor.shape != shape:
                    raise ValueError(
                        f"{label}[{name!r}] has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(shape)}"
                    )
            ic_shape = initial_condition[name].shape
            if ic_shape != (shape[0], shape[2], shape[3]):
                raise ValueError(
                    f"initial_condition[{name!r}] has shape {tuple(ic_shape)}, "
                    f"expected {(shape[0], shape[2], shape[3])}"
                )
            if corrections is not None and name in corrections:
                if corrections[name].shape != shape:
                    raise ValueError(
                        f"corrections[{name!r}] has shape "
                        f"{tuple(corrections[name].shape)}, expected {tuple(shape)}"
                    )
        n_leads = shape[1]
        if lead_start < 1 or lead_start + n_leads - 1 > self._n_lead_times:
            raise ValueError(
                f"leads {lead_start}..{lead_start + n_leads - 1} are outside "
                f"1..{self._n_lead_times} (lead_start counts steps after the "
                "initial condition and starts at 1)"
            )
        return shape[0], n_leads

    def get_state(self) -> dict[str, torch.Tensor]:
        """Copies of the accumulated sums and counts (all float64).

        Per-variable sums are ``[len(names), n_lead_times]``, drift sums
        ``[len(conserved_names), n_lead_times]``, counts ``[n_lead_times]``.
        """
        return {key: value.clone() for key, value in self._sums.items()}

    def merge_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Add the sums and counts of another aggregator with the same setup."""
        if set(state) != set(self._sums):
            raise ValueError(
                f"state keys {sorted(state)} do not match {sorted(self._sums)}"
            )
        for key, value in state.items():
            if value.shape != self._sums[key].shape:
                raise ValueError(
                    f"state[{key!r}] has shape {tuple(value.shape)}, expected "
                    f"{tuple(self._sums[key].shape)}"
                )
            self._sums[key] += value.to(self._sums[key])

    def reduced(
        self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]
    ) -> "RolloutMetricsAggregator":
        """A new aggregator holding the sums over all ranks.

        Every rank must call this (it runs one collective per state tensor);
        this aggregator is left unchanged, so reducing twice cannot double
        count.

        Args:
            reduce_sum: sums a tensor over ranks, e.g.
                ``DistributedContext.reduce_sum``.
        """
        result = RolloutMetricsAggregator(
            gridded_operations=self._ops,
            names=self._names,
            conserved_names=[
                n for n in self._conserved_names if n not in self._derived
            ],
            n_lead_times=self._n_lead_times,
            device=self._device,
            derived_quantities=self._derived,
        )
        result.merge_state({k: reduce_sum(v) for k, v in self._sums.items()})
        return result

    def _per_lead(self) -> dict[str, torch.Tensor]:
        """Per-lead metric tensors ``[n_vars, n_lead_times]`` (NaN where unrecorded)."""
        s = self._sums

        def mean(key: str, count_key: str = "count") -> torch.Tensor:
            count = s[count_key]
            safe = torch.where(count > 0, count, torch.ones_like(count))
            nan = torch.full_like(s[key], float("nan"))
            return torch.where(count > 0, s[key] / safe, nan)

        rmse = mean("mse").sqrt()
        persistence_rmse = mean("persistence_mse").sqrt()
        skill = torch.where(
            persistence_rmse > 0,
            1.0 - rmse / persistence_rmse,
            torch.full_like(rmse, float("nan")),
        )
        return {
            "rmse": rmse,
            "persistence_rmse": persistence_rmse,
            "bias": mean("bias"),
            "skill": skill,
            "correction_rms": mean("correction_ms", "correction_count").sqrt(),
            "global_mean_drift": mean("global_mean_drift"),
            "target_global_mean_drift": mean("target_global_mean_drift"),
        }

    def _names_of(self, metric: str) -> list[str]:
        if metric in _PER_CONSERVED_SUMS:
            return self._conserved_names
        return self._names

    def get_curves(self) -> dict[str, list[float]]:
        """Per-lead series for plotting.

        Returns:
            ``{"<metric>/<var>": [value at lead 1, ..., value at lead
            n_lead_times]}`` for metrics ``rmse``, ``persistence_rmse``,
            ``bias``, ``skill``, ``correction_rms`` (every variable) and
            ``global_mean_drift``, ``target_global_mean_drift`` (conserved
            variables); NaN at leads never recorded.
        """
        curves: dict[str, list[float]] = {}
        for metric, values in self._per_lead().items():
            for i, name in enumerate(self._names_of(metric)):
                curves[f"{metric}/{name}"] = values[i].tolist()
        return curves

    def get_metrics(self) -> dict[str, float]:
        """Scalar metrics for logging.

        Returns:
            Per lead ``<metric>/<var>/lead_<k>`` for every recorded lead ``k``,
            and summaries ``<metric>/<var>``: the mean over recorded leads for
            ``rmse``, ``persistence_rmse``, ``bias`` and ``correction_rms``;
            ``skill/<var> = 1 - mean(rmse) / mean(persistence_rmse)``; the value
            at the last recorded lead for ``global_mean_drift`` and
            ``target_global_mean_drift``. ``correction_rms`` appears only
            when corrections were recorded.
        """
        per_lead = self._per_lead()
        recorded = (self._sums["count"] > 0).nonzero().flatten().tolist()
        corrected = (self._sums["correction_count"] > 0).nonzero().flatten().tolist()
        metrics: dict[str, float] = {}
        if not recorded:
            return metrics
        for metric, values in per_lead.items():
            leads = corrected if metric == "correction_rms" else recorded
            if not leads:
                continue
            for i, name in enumerate(self._names_of(metric)):
                for lead_index in leads:
                    key = f"{metric}/{name}/lead_{lead_index + 1}"
                    metrics[key] = float(values[i, lead_index])
                if metric in _PER_CONSERVED_SUMS:
                    summary = values[i, leads[-1]]
                elif metric == "skill":
                    rmse = per_lead["rmse"][i, leads].mean()
                    persistence = per_lead["persistence_rmse"][i, leads].mean()
                    summary = (
                        1.0 - rmse / persistence
                        if persistence > 0
                        else torch.tensor(float("nan"))
                    )
                else:
                    summary = values[i, leads].mean()
                metrics[f"{metric}/{name}"] = float(summary)
        return metrics
