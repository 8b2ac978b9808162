"""Weight schedules of the named terms of the total loss, on the optimiser clock.

Every term of the total loss has a name (``main``,
``corrector_regularization``, ``global_mean``).
``stepper_training.loss_weight_schedules: {<term>: {type: ..., ...}}`` gives
terms a schedule; a term's effective weight is its schedule's value times the
weight configured on the term (1 for ``main``). ``t`` counts the optimiser
steps since the schedules started, read from
``fme.core.schedule.OptimizerClock``.

Types: the curves of ``fme.core.schedule`` with these keys: ``constant``:
``value``; ``linear``, ``cosine``: ``start``, ``end``, ``n_steps``;
``exponential``: ``start``, ``end`` (both > 0), ``n_steps``, i.e.
``w(t) = start * (end / start) ** (min(t, n_steps) / n_steps)``;
``warmup_cosine``: ``start``, ``peak``, ``end``, ``warmup_steps``,
``n_steps``; ``piecewise_constant``: ``boundaries``, ``values``;
``sequential``: ``schedulers`` (blocks of these types) and ``milestones``.
And ``adaptive`` (inverse magnitude): after each optimiser step the term's
detached loss ``L`` (reduced, before any weight) updates its moving average,
``m = L`` at first, then ``m = a * m + (1 - a) * L`` (``a = ema_decay``,
default 0); ``w = start`` (default 1) before the first loss, then
``w = clip(target / max(m, 1e-12), min_value, max_value)`` (``target``
default 1), steering ``w * L`` towards ``target``. No gradient flows through
``w``.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fme.core.schedule import (
    Exponential,
    OptimizerClock,
    Schedule,
    Spelling,
    parse_schedule,
)

METRIC_PREFIX = "loss_weight/"
_MIN_LOSS = 1e-12
_PATH = "stepper_training.loss_weight_schedules"


class WeightSchedule:
    """A closed-form schedule: a function of ``t`` alone.

    Args:
        curve: ``t -> w(t)``.
    """

    adaptive = False

    def __init__(self, curve: Schedule):
        self._curve = curve

    def value(self, t: int) -> float:
        """The value used by optimiser step ``t + 1``."""
        return float(self._curve(t))

    def observe(self, loss: float) -> None:
        """Take the term's detached loss of the step being taken (unused here)."""

    def get_state(self) -> dict[str, Any]:
        """Plain-data state (none for a closed form)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``get_state()`` output."""


class AdaptiveWeight(WeightSchedule):
    """Inverse-magnitude weight from a moving average of the term's losses."""

    adaptive = True

    def __init__(
        self,
        *,
        target: float,
        ema_decay: float,
        start: float,
        min_value: float | None,
        max_value: float | None,
    ):
        if ema_decay >= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if min_value is not None and max_value is not None and min_value > max_value:
            raise ValueError(
                f"min_value ({min_value}) must not exceed max_value ({max_value})"
            )
        super().__init__(lambda t: start)
        self._target, self._decay = float(target), float(ema_decay)
        self._clip = (min_value, max_value)
        self._ema: float | None = None

    def value(self, t: int) -> float:
        """``start`` before any loss, else ``clip(target / max(m, 1e-12))``."""
        if self._ema is None:
            return super().value(t)
        value = self._target / max(self._ema, _MIN_LOSS)
        low, high = self._clip
        value = value if low is None else max(low, value)
        return value if high is None else min(high, value)

    def observe(self, loss: float) -> None:
        """Update the moving average ``m`` with ``loss``."""
        self._ema = (
            loss
            if self._ema is None
            else self._decay * self._ema + (1 - self._decay) * loss
        )

    def get_state(self) -> dict[str, Any]:
        """``{"loss_average": m}``."""
        return {"loss_average": self._ema}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``get_state()`` output."""
        average = state.get("loss_average")
        self._ema = None if average is None else float(average)


def _exponential(*, start: float, end: float, n_steps: int) -> Schedule:
    if not (start > 0 and end > 0):
        raise ValueError(
            f"exponential start and end must be > 0, got start={start}, end={end}"
        )
    return Exponential(start, end / start, n_steps, end)


_THREE: tuple[tuple[str, ...], dict[str, Any]] = (("start", "end", "n_steps"), {})
_SPELLING = Spelling(
    keys={
        "constant": (("value",), {}),
        "exponential": _THREE,
        "linear": _THREE,
        "cosine": _THREE,
        "warmup_cosine": (("start", "peak", "end", "warmup_steps", "n_steps"), {}),
        "piecewise_constant": (("boundaries", "values"), {}),
        "sequential": (("schedulers", "milestones"), {}),
        "adaptive": (
            (),
            {
                "target": 1.0,
                "ema_decay": 0.0,
                "start": 1.0,
                "min_value": None,
                "max_value": None,
            },
        ),
    },
    curves={"exponential": _exponential, "adaptive": AdaptiveWeight},
    not_in_sequential=("sequential", "adaptive"),
)
LOSS_WEIGHT_SCHEDULE_TYPES = tuple(_SPELLING.keys)


@dataclasses.dataclass
class LossWeightScheduleConfig:
    """The weight schedule of one loss term (types in the module docstring).

    Each type takes exactly its own fields; a missing or extra one is an error
    naming it.

    Attributes:
        type: the schedule type.
        start: value at ``t = 0`` (for ``adaptive``, before the first loss).
        end: value from ``t = n_steps`` on.
        n_steps: optimiser steps from ``start`` to ``end`` (>= 1).
        value: the ``constant`` value.
        peak: the value after the warm-up (``warmup_cosine``).
        warmup_steps: steps from ``start`` to ``peak`` (``warmup_cosine``).
        boundaries: increasing optimiser-step counts at which a
            ``piecewise_constant`` value changes.
        values: the ``len(boundaries) + 1`` values (``piecewise_constant``).
        schedulers: the member blocks of a ``sequential`` schedule.
        milestones: the steps at which the next member takes over
            (``sequential``; ``len(schedulers) - 1`` increasing counts).
        target: the value ``w * L`` is steered towards (``adaptive``, > 0).
        ema_decay: smoothing ``a`` in ``[0, 1)`` (``adaptive``).
        min_value: lower clip of the ``adaptive`` value.
        max_value: upper clip of the ``adaptive`` value.
    """

    type: str
    start: float | None = None
    end: float | None = None
    n_steps: int | None = None
    value: float | None = None
    peak: float | None = None
    warmup_steps: int | None = None
    boundaries: list[int] | None = None
    values: list[float] | None = None
    schedulers: list[dict[str, Any]] | None = None
    milestones: list[int] | None = None
    target: float | None = None
    ema_decay: float | None = None
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self):
        if self.type not in _SPELLING.keys:
            raise ValueError(
                f"{_PATH}: unknown schedule type {self.type!r}; "
                f"allowed: {list(LOSS_WEIGHT_SCHEDULE_TYPES)}"
            )
        self.build()  # every check now, before training

    def build(self) -> WeightSchedule:
        """A fresh schedule of this config."""
        params = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "type" and getattr(self, f.name) is not None
        }
        schedule = parse_schedule(self.type, params, path=_PATH, spelling=_SPELLING)
        if isinstance(schedule, WeightSchedule):
            return schedule
        return WeightSchedule(schedule)


def check_loss_weight_schedule_terms(
    schedules: Mapping[str, LossWeightScheduleConfig], *, term_names: Sequence[str]
) -> None:
    """Raise, before training, if a schedule names a term that is not in the loss.

    Raises:
        ValueError: naming the unknown terms and listing the valid ones.
    """
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
    clock: OptimizerClock,
) -> "LossWeightSchedules":
    """The schedules of all loss terms, starting now on ``clock``.

    Args:
        schedules: ``stepper_training.loss_weight_schedules``.
        term_names: every term that enters the total loss.
        base_weights: the weight configured on each term (default 1).
        clock: the optimiser clock.
    """
    check_loss_weight_schedule_terms(schedules, term_names=term_names)
    return LossWeightSchedules(
        {name: config.build() for name, config in schedules.items()},
        term_names=term_names,
        base_weights=base_weights,
        clock=clock,
    )


class LossWeightSchedules:
    """The effective weights of the named loss terms.

    Args:
        schedules: the schedule of each scheduled term.
        term_names: every term that enters the total loss.
        base_weights: the weight configured on each term (default 1).
        clock: the optimiser clock; ``t`` counts its steps from now.
    """

    def __init__(
        self,
        schedules: Mapping[str, WeightSchedule],
        *,
        term_names: Sequence[str],
        base_weights: Mapping[str, float],
        clock: OptimizerClock,
    ):
        for what, names in (("schedules", schedules), ("base_weights", base_weights)):
            unknown = sorted(set(names) - set(term_names))
            if unknown:
                raise ValueError(
                    f"{what} name unknown loss term(s) {unknown}; "
                    f"valid: {sorted(term_names)}"
                )
        self._term_names = list(term_names)
        self._schedules = dict(schedules)
        self._base = {name: float(base_weights.get(name, 1.0)) for name in term_names}
        self._clock = clock
        self._origin = clock.step

    @property
    def t(self) -> int:
        """Optimiser steps since the schedules started."""
        return self._clock.step - self._origin

    def read_clock(self, clock: OptimizerClock) -> None:
        """Read ``clock`` from now on, keeping the position ``t``.

        The schedules follow the clock of the optimisation that trains them.
        """
        if clock is not self._clock:
            t, self._clock = self.t, clock
            self._origin = clock.step - t

    @property
    def adaptive_terms(self) -> list[str]:
        """Terms whose weight needs their losses in ``observe``."""
        return [name for name, s in self._schedules.items() if s.adaptive]

    def weights(self) -> dict[str, float]:
        """Effective weight of every term: schedule value times base weight."""
        t = self.t
        return {
            name: self._base[name]
            * (self._schedules[name].value(t) if name in self._schedules else 1.0)
            for name in self._term_names
        }

    def weight_tensors(
        self, device: torch.device | str, *, dtype: torch.dtype = torch.float32
    ) -> dict[str, torch.Tensor]:
        """``weights()`` as scalar tensors on ``device`` (no gradient)."""
        return {
            name: torch.tensor(weight, device=device, dtype=dtype)
            for name, weight in self.weights().items()
        }

    def metrics(self) -> dict[str, float]:
        """``{"loss_weight/<term>": effective weight}`` for every term."""
        return {METRIC_PREFIX + name: w for name, w in self.weights().items()}

    def observe(self, term_losses: Mapping[str, float | torch.Tensor]) -> None:
        """Take the terms' losses of the optimiser step being taken (step t + 1).

        Args:
            term_losses: each term's reduced loss, before any weight; needed
                for the adaptive terms. Tensors are detached. Under data
                parallelism pass the mean over ranks.

        Raises:
            ValueError: if a name is unknown, an adaptive term's loss is
                missing or not finite, or a loss is not a scalar.
        """
        unknown = sorted(set(term_losses) - set(self._term_names))
        if unknown:
            raise ValueError(
                f"term_losses name unknown loss term(s) {unknown}; "
                f"valid: {sorted(self._term_names)}"
            )
        adaptive = self.adaptive_terms
        missing = [name for name in adaptive if name not in term_losses]
        if missing:
            raise ValueError(
                f"adaptive loss weights need the losses of {missing} at every "
                "optimiser step: pass them to observe(term_losses)"
            )
        values = {name: _as_float(term_losses[name]) for name in adaptive}
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(
                    f"loss term {name!r} is {value} at optimiser step "
                    f"{self.t + 1}; its adaptive weight cannot be updated"
                )
        for name, value in values.items():
            self._schedules[name].observe(value)

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ``t`` (the position on the clock) and each term's state."""
        return {
            "t": self.t,
            "terms": {name: s.get_state() for name, s in self._schedules.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; load the clock first.

        A term scheduled now but absent from ``state`` keeps its fresh state;
        state of terms no longer scheduled is ignored.
        """
        self._origin = self._clock.step - int(state["t"])
        terms = state.get("terms", {})
        for name, schedule in self._schedules.items():
            if name in terms:
                schedule.load_state(terms[name])


def _as_float(loss: float | torch.Tensor) -> float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"term losses must be scalars, got a tensor of shape {tuple(loss.shape)}"
            )
        return float(loss.detach().item())
    return float(loss)
