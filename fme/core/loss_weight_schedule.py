"""Weight schedules of the named terms of the total loss, on the optimiser clock.

``stepper_training.loss_weight_schedules: {<term>: {type, kwargs}}`` (types and
keys in the README): a term's effective weight is its schedule's value at
``t``, the optimiser steps since the schedules started, times the weight
configured on the term (1 for ``main``). No gradient flows through a weight.
"""

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from fme.core import schedule as curves

if TYPE_CHECKING:
    from fme.core.optimization import OptimizerClock

METRIC_PREFIX = "loss_weight/"
_PATH = "stepper_training.loss_weight_schedules"


class WeightSchedule(NamedTuple):
    """A closed-form weight schedule: ``value(t)``, a function of ``t`` alone."""

    value: curves.Schedule


@dataclasses.dataclass
class AdaptiveWeight:
    """Inverse magnitude: ``clip(target / max(m, 1e-12), min_value, max_value)``.

    Each optimiser step's detached loss ``L`` of the term (reduced, before any
    weight) updates ``m = L`` at first, then ``m = a * m + (1 - a) * L`` with
    ``a = ema_decay``; the weight is ``start`` before the first loss. Its
    state is ``loss_average``, ``m`` (None before the first loss).
    """

    target: float = 1
    ema_decay: float = 0
    start: float = 1
    min_value: float | None = None
    max_value: float | None = None
    loss_average: float | None = dataclasses.field(default=None, init=False)

    def __post_init__(self):
        if self.ema_decay >= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    def value(self, t: int) -> float:
        """``start`` before any loss, else the clipped inverse magnitude."""
        m, low, high = self.loss_average, self.min_value, self.max_value
        if m is None:
            return float(self.start)
        return float(curves.clip(self.target / max(m, 1e-12), low, high))

    def observe(self, loss: float) -> None:
        """Update the moving average ``m`` with ``loss``."""
        m, a = self.loss_average, self.ema_decay
        self.loss_average = loss if m is None else a * m + (1 - a) * loss


def _exponential(*, start: float, end: float, n_steps: int) -> curves.Schedule:
    """``start`` to ``end`` (both > 0) in ``n_steps``, geometrically."""
    if not (start > 0 and end > 0):
        raise ValueError(f"exponential start and end must be > 0, got {start}, {end}")
    return curves.exponential(start, end / start, n_steps, end)


_TYPES: dict[str, Any] = {**curves.CURVES, "exponential": _exponential}
_MEMBER_TYPES = {k: v for k, v in _TYPES.items() if k != "sequential"}
_TYPES["adaptive"] = AdaptiveWeight


@dataclasses.dataclass
class LossWeightScheduleConfig:
    """The weight schedule of one loss term.

    Attributes:
        type: a curve of ``fme.core.schedule`` or ``adaptive`` (``AdaptiveWeight``).
        kwargs: exactly the type's keys; a missing or extra one is an error.
    """

    type: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def migrate_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The former spelling, keys next to ``type``, moved under ``kwargs``."""
        moved = {k: v for k, v in data.items() if k not in ("type", "kwargs")}
        if not moved:
            return data
        if "kwargs" in data:
            raise ValueError(f"{_PATH}: put {sorted(moved)} under kwargs")
        logging.info("%s: keys %s moved under kwargs", _PATH, sorted(moved))
        return {"type": data.get("type"), "kwargs": moved}

    def __getattr__(self, name: str) -> Any:
        """The type's keys read as attributes (e.g. ``config.end``), as before."""
        kwargs = self.__dict__.get("kwargs", {})
        if name in kwargs:
            return kwargs[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __post_init__(self):
        self.build()  # every check now, before training

    def build(self) -> WeightSchedule | AdaptiveWeight:
        """A fresh schedule of this config."""
        schedule = curves.parse_schedule(
            self.type,
            self.kwargs,
            path=_PATH,
            types=_TYPES,
            member=lambda type_, kwargs, path: curves.parse_schedule(
                type_, kwargs, path=path, types=_MEMBER_TYPES
            ),
        )
        return schedule if self.type == "adaptive" else WeightSchedule(schedule)


def check_loss_weight_schedule_terms(
    schedules: Mapping[str, LossWeightScheduleConfig], *, term_names: Sequence[str]
) -> None:
    """Raise, before training, naming schedules of terms not in the loss."""
    unknown = sorted(set(schedules) - set(term_names))
    if unknown:
        raise ValueError(
            f"{_PATH}: unknown loss term(s) {unknown}; the terms of this "
            f"configuration's loss are {sorted(term_names)}"
        )


def build_loss_weight_schedules(
    schedules: Mapping[str, LossWeightScheduleConfig],
    *,
    term_names: Sequence[str],
    base_weights: Mapping[str, float],
    clock: "OptimizerClock",
) -> "LossWeightSchedules":
    """The schedules of the loss terms ``term_names`` (configured weights
    ``base_weights``, default 1), starting now on ``clock``."""
    check_loss_weight_schedule_terms(schedules, term_names=term_names)
    return LossWeightSchedules(
        {name: config.build() for name, config in schedules.items()},
        base_weights={name: base_weights.get(name, 1.0) for name in term_names},
        clock=clock,
    )


class LossWeightSchedules:
    """The effective weights of the named loss terms, ``t`` counting the steps
    of ``clock`` from now; ``base_weights`` has every term of the loss."""

    def __init__(
        self,
        schedules: Mapping[str, WeightSchedule | AdaptiveWeight],
        *,
        base_weights: Mapping[str, float],
        clock: "OptimizerClock",
    ):
        self._schedules, self._base = dict(schedules), dict(base_weights)
        self._adaptive = {
            name: s for name, s in schedules.items() if isinstance(s, AdaptiveWeight)
        }
        self._clock, self._origin = clock, clock.step

    @property
    def t(self) -> int:
        """Optimiser steps since the schedules started."""
        return self._clock.step - self._origin

    def read_clock(self, clock: "OptimizerClock") -> None:
        """Follow ``clock`` (the training optimisation's) from now, keeping ``t``."""
        self._origin, self._clock = clock.step - self.t, clock

    def weights(self) -> dict[str, float]:
        """Effective weight of every term: schedule value times base weight."""
        t, schedules = self.t, self._schedules
        return {
            name: base * (schedules[name].value(t) if name in schedules else 1.0)
            for name, base in self._base.items()
        }

    def weight_tensors(
        self, device: torch.device | str, *, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """``weights()`` as scalar tensors on ``device`` (no gradient)."""
        weights = self.weights().items()
        return {k: torch.tensor(w, device=device, dtype=dtype) for k, w in weights}

    def metrics(self) -> dict[str, float]:
        """``{"loss_weight/<term>": effective weight}`` for every term."""
        return {METRIC_PREFIX + name: w for name, w in self.weights().items()}

    def observe(self, term_losses: Mapping[str, float | torch.Tensor]) -> None:
        """Take each term's reduced loss (before any weight; under data
        parallelism the mean over ranks) of the optimiser step being taken.

        Raises:
            ValueError: for an unknown term, or an adaptive term's loss that is
                missing, not a scalar or not finite.
        """
        unknown = sorted(set(term_losses) - set(self._base))
        if unknown:
            raise ValueError(
                f"term_losses name unknown loss term(s) {unknown}; "
                f"valid: {sorted(self._base)}"
            )
        missing = [name for name in self._adaptive if name not in term_losses]
        if missing:
            raise ValueError(
                f"adaptive loss weights need the losses of {missing} at every "
                "optimiser step: pass them to observe(term_losses)"
            )
        values = {name: _as_float(term_losses[name]) for name in self._adaptive}
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(
                    f"loss term {name!r} is {value} at optimiser step {self.t + 1}; "
                    "its adaptive weight cannot be updated"
                )
        for name, value in values.items():
            self._adaptive[name].observe(value)

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ``t`` (the position on the clock) and each term's state
        (``{"loss_average": m}`` of an adaptive one)."""
        terms: dict[str, Any] = {name: {} for name in self._schedules}
        for name, schedule in self._adaptive.items():
            terms[name] = {"loss_average": schedule.loss_average}
        return {"t": self.t, "terms": terms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (after the clock); a term absent
        from ``state`` keeps its fresh state, other terms' state is ignored."""
        self._origin = self._clock.step - int(state["t"])
        terms = state.get("terms", {})
        for name in set(self._adaptive) & set(terms):
            m = terms[name].get("loss_average")
            self._adaptive[name].loss_average = None if m is None else float(m)


def _as_float(loss: float | torch.Tensor) -> float:
    if not isinstance(loss, torch.Tensor):
        return float(loss)
    if loss.numel() != 1:
        raise ValueError(f"term losses must be scalars, got shape {tuple(loss.shape)}")
    return float(loss.detach().item())
