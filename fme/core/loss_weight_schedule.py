"""Weight schedules for the named terms of the total loss.

Every term that enters the total loss has a name (``main``,
``corrector_regularization``, ``global_mean`` …). One YAML block,
``stepper_training.loss_weight_schedules: {<term>: {type: ..., ...}}``, gives
terms a schedule. A term's effective weight is its schedule's value times the
weight configured on the term itself (1 for ``main``); a term without a
schedule keeps its configured weight. The loss code multiplies each reduced
term by its effective weight.

Notation: ``t`` is the number of optimiser steps taken so far; ``w(t)`` is the
schedule value used by optimiser step ``t + 1``. With ``N = n_steps``,
``s = min(t, N) / N`` (so schedules hold their end value past ``N``):

- ``constant``: ``w(t) = value``.
- ``exponential``: ``w(t) = start * (end / start) ** s``.
- ``linear``: ``w(t) = start + (end - start) * s``.
- ``cosine``: ``w(t) = end + (start - end) * (1 + cos(pi * s)) / 2``.
- ``piecewise_constant``: ``w(t) = values[i]`` with ``i`` the number of
  ``boundaries`` that are ``<= t`` (so ``values[0]`` before ``boundaries[0]``).
- ``adaptive`` (inverse magnitude): each optimiser step reports the term's
  detached loss ``L`` (reduced, before any weight). Its exponential moving
  average is ``m = L`` at the first report, then ``m = a * m + (1 - a) * L``
  with ``a = ema_decay``. The value is ``w = start`` before the first report
  and ``w = clip(target / max(m, 1e-12), min_value, max_value)`` after it, so
  the weighted term ``w * L`` is steered towards ``target``. No gradient flows
  through ``w``: it is a plain float computed from detached numbers.
"""

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch

LOSS_WEIGHT_SCHEDULE_TYPES = (
    "constant",
    "exponential",
    "linear",
    "cosine",
    "piecewise_constant",
    "adaptive",
)
METRIC_PREFIX = "loss_weight/"
_MIN_LOSS = 1e-12
_PATH = "stepper_training.loss_weight_schedules"

# (required fields, optional fields) of each type.
_TYPE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": (("value",), ()),
    "exponential": (("start", "end", "n_steps"), ()),
    "linear": (("start", "end", "n_steps"), ()),
    "cosine": (("start", "end", "n_steps"), ()),
    "piecewise_constant": (("boundaries", "values"), ()),
    "adaptive": ((), ("target", "ema_decay", "start", "min_value", "max_value")),
}


@dataclasses.dataclass
class LossWeightScheduleConfig:
    """The weight schedule of one loss term (formulas in the module docstring).

    Each type takes exactly its own fields; a missing or extra field is an
    error naming it.

    Attributes:
        type: one of ``constant``, ``exponential``, ``linear``, ``cosine``,
            ``piecewise_constant``, ``adaptive``.
        start: value at ``t = 0`` (``exponential``, ``linear``, ``cosine``;
            > 0 for ``exponential``); for ``adaptive``, the value before the
            first loss is reported (default 1).
        end: value from ``t = n_steps`` on (``exponential``, ``linear``,
            ``cosine``; > 0 for ``exponential``).
        n_steps: optimiser steps from ``start`` to ``end`` (>= 1).
        value: the constant value (``constant``).
        boundaries: strictly increasing positive optimiser-step counts at which
            the value changes (``piecewise_constant``).
        values: the ``len(boundaries) + 1`` values (``piecewise_constant``).
        target: the value ``w * L`` is steered towards (``adaptive``, > 0,
            default 1).
        ema_decay: smoothing ``a`` in ``[0, 1)`` of the loss average
            (``adaptive``, default 0: the last loss only).
        min_value: lower clip of the adaptive value (``adaptive``, optional).
        max_value: upper clip of the adaptive value (``adaptive``, optional).
    """

    type: str
    start: float | None = None
    end: float | None = None
    n_steps: int | None = None
    value: float | None = None
    boundaries: list[int] | None = None
    values: list[float] | None = None
    target: float | None = None
    ema_decay: float | None = None
    min_value: float | None = None
    max_value: float | None = None

    def __post_init__(self):
        if self.type not in _TYPE_FIELDS:
            raise ValueError(
                f"{_PATH}: unknown schedule type {self.type!r}; "
                f"allowed: {list(LOSS_WEIGHT_SCHEDULE_TYPES)}"
            )
        required, optional = _TYPE_FIELDS[self.type]
        allowed = sorted(["type", *required, *optional])
        given = {
            f.name
            for f in dataclasses.fields(self)
            if f.name != "type" and getattr(self, f.name) is not None
        }
        extra = sorted(given - set(allowed))
        if extra:
            raise ValueError(
                f"{_PATH}: type {self.type!r} does not take {extra}; "
                f"its fields: {allowed}"
            )
        missing = [name for name in required if name not in given]
        if missing:
            raise ValueError(
                f"{_PATH}: type {self.type!r} needs {missing}; its fields: {allowed}"
            )
        self._check_values()

    def _check_values(self) -> None:
        for name in ("start", "end", "value", "min_value", "max_value"):
            if getattr(self, name) is not None:
                _check_number(getattr(self, name), name=name, minimum=0.0)
        if self.n_steps is not None:
            _check_number(self.n_steps, name="n_steps", minimum=1, integer=True)
        if self.type == "exponential":
            for name in ("start", "end"):
                _check_number(getattr(self, name), name=name, minimum=0.0, strict=True)
        if self.type == "piecewise_constant":
            assert self.boundaries is not None and self.values is not None
            for i, boundary in enumerate(self.boundaries):
                _check_number(
                    boundary, name=f"boundaries[{i}]", minimum=1, integer=True
                )
            pairs = zip(self.boundaries[:-1], self.boundaries[1:], strict=True)
            if any(a >= b for a, b in pairs):
                raise ValueError(
                    f"{_PATH}: boundaries must be strictly increasing, "
                    f"got {self.boundaries}"
                )
            if len(self.values) != len(self.boundaries) + 1:
                raise ValueError(
                    f"{_PATH}: values needs len(boundaries) + 1 = "
                    f"{len(self.boundaries) + 1} entries, got {len(self.values)}"
                )
            for i, value in enumerate(self.values):
                _check_number(value, name=f"values[{i}]", minimum=0.0)
        if self.target is not None:
            _check_number(self.target, name="target", minimum=0.0, strict=True)
        if self.ema_decay is not None:
            _check_number(self.ema_decay, name="ema_decay", minimum=0.0)
            if self.ema_decay >= 1.0:
                raise ValueError(
                    f"{_PATH}: ema_decay must be in [0, 1), got {self.ema_decay}"
                )
        if (
            self.min_value is not None
            and self.max_value is not None
            and self.min_value > self.max_value
        ):
            raise ValueError(
                f"{_PATH}: min_value ({self.min_value}) must not exceed "
                f"max_value ({self.max_value})"
            )

    def build(self) -> "WeightSchedule":
        """The schedule of this config."""
        if self.type == "adaptive":
            return AdaptiveWeight(
                target=1.0 if self.target is None else float(self.target),
                ema_decay=0.0 if self.ema_decay is None else float(self.ema_decay),
                start=1.0 if self.start is None else float(self.start),
                min_value=self.min_value,
                max_value=self.max_value,
            )
        return ClosedFormWeight(self._closed_form())

    def _closed_form(self) -> Callable[[int], float]:
        # __post_init__ guarantees the fields each type needs are set.
        if self.type == "constant":
            assert self.value is not None
            value = float(self.value)
            return lambda t: value
        if self.type == "piecewise_constant":
            assert self.boundaries is not None and self.values is not None
            boundaries = [int(b) for b in self.boundaries]
            values = [float(v) for v in self.values]
            return lambda t: values[bisect.bisect_right(boundaries, t)]
        assert self.start is not None and self.end is not None
        assert self.n_steps is not None
        start, end, n_steps = float(self.start), float(self.end), int(self.n_steps)
        if self.type == "exponential":
            return lambda t: start * (end / start) ** (min(t, n_steps) / n_steps)
        if self.type == "linear":
            return lambda t: start + (end - start) * min(t, n_steps) / n_steps
        if self.type == "cosine":
            return lambda t: (
                end
                + (start - end)
                * (1.0 + math.cos(math.pi * min(t, n_steps) / n_steps))
                / 2.0
            )
        raise AssertionError(f"unhandled schedule type {self.type}")


class WeightSchedule:
    """The value of one term's schedule; the base class is stateless."""

    adaptive = False

    def value(self, t: int) -> float:
        """The schedule value used by optimiser step ``t + 1``."""
        raise NotImplementedError

    def observe(self, loss: float) -> None:
        """Take the term's detached loss of the optimiser step just taken."""

    def get_state(self) -> dict[str, Any]:
        """Plain-data state (empty for closed-form schedules)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``get_state()`` output."""


class ClosedFormWeight(WeightSchedule):
    """A schedule that is a function of ``t`` alone.

    Args:
        fn: ``t -> w(t)``.
    """

    def __init__(self, fn: Callable[[int], float]):
        self._fn = fn

    def value(self, t: int) -> float:
        """``w(t)``."""
        return float(self._fn(t))


class AdaptiveWeight(WeightSchedule):
    """Inverse-magnitude weight from an EMA of the term's detached losses.

    Args:
        target: the value ``w * L`` is steered towards.
        ema_decay: smoothing ``a`` of the loss average.
        start: the value before the first reported loss.
        min_value: lower clip, if any.
        max_value: upper clip, if any.
    """

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
        self._target = target
        self._ema_decay = ema_decay
        self._start = start
        self._min_value = min_value
        self._max_value = max_value
        self._ema: float | None = None

    @property
    def loss_average(self) -> float | None:
        """The EMA ``m`` of the reported losses; None before the first."""
        return self._ema

    def value(self, t: int) -> float:
        """``start`` before any loss, else ``clip(target / max(m, 1e-12))``."""
        if self._ema is None:
            return self._start
        value = self._target / max(self._ema, _MIN_LOSS)
        if self._min_value is not None:
            value = max(self._min_value, value)
        if self._max_value is not None:
            value = min(self._max_value, value)
        return value

    def observe(self, loss: float) -> None:
        """Update ``m`` with ``loss``."""
        if self._ema is None:
            self._ema = loss
        else:
            self._ema = self._ema_decay * self._ema + (1.0 - self._ema_decay) * loss

    def get_state(self) -> dict[str, Any]:
        """``{"loss_average": m}``."""
        return {"loss_average": self._ema}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore ``get_state()`` output."""
        average = state.get("loss_average")
        self._ema = None if average is None else float(average)


def check_loss_weight_schedule_terms(
    schedules: Mapping[str, LossWeightScheduleConfig], *, term_names: Sequence[str]
) -> None:
    """Raise if a schedule names a term that is not in the loss.

    Call it from config validation so the error comes before training.

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
) -> "LossWeightSchedules":
    """The schedules of all loss terms.

    Args:
        schedules: ``stepper_training.loss_weight_schedules``.
        term_names: every term that enters the total loss.
        base_weights: the weight configured on each term; a term missing here
            has base weight 1.

    Raises:
        ValueError: if a schedule or base weight names an unknown term.
    """
    check_loss_weight_schedule_terms(schedules, term_names=term_names)
    return LossWeightSchedules(
        {name: config.build() for name, config in schedules.items()},
        term_names=term_names,
        base_weights=base_weights,
    )


class LossWeightSchedules:
    """The effective weights of the named loss terms, on the optimiser clock.

    Args:
        schedules: the schedule of each scheduled term.
        term_names: every term that enters the total loss.
        base_weights: the weight configured on each term (default 1).
    """

    def __init__(
        self,
        schedules: Mapping[str, WeightSchedule],
        *,
        term_names: Sequence[str],
        base_weights: Mapping[str, float],
    ):
        if len(set(term_names)) != len(term_names):
            raise ValueError(f"loss term names must be unique, got {list(term_names)}")
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
        self._t = 0

    @property
    def t(self) -> int:
        """Optimiser steps taken so far."""
        return self._t

    @property
    def term_names(self) -> list[str]:
        """Every term that enters the total loss."""
        return list(self._term_names)

    @property
    def adaptive_terms(self) -> list[str]:
        """Terms whose weight needs their losses in ``step_optimizer``."""
        return [name for name, s in self._schedules.items() if s.adaptive]

    def weights(self) -> dict[str, float]:
        """Effective weight of every term: schedule value times base weight."""
        return {
            name: self._base[name]
            * (self._schedules[name].value(self._t) if name in self._schedules else 1.0)
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

    def step_optimizer(
        self, term_losses: Mapping[str, float | torch.Tensor] | None = None
    ) -> None:
        """Advance ``t`` by one; call once after each optimiser step.

        Args:
            term_losses: each term's reduced loss of the step just taken,
                before any weight; required for the adaptive terms. Tensors
                are detached. Under data parallelism pass the mean over ranks,
                so every rank computes the same weights.

        Raises:
            ValueError: if a name is unknown, an adaptive term's loss is
                missing, or a loss is not finite.
        """
        losses = {} if term_losses is None else dict(term_losses)
        unknown = sorted(set(losses) - set(self._term_names))
        if unknown:
            raise ValueError(
                f"term_losses name unknown loss term(s) {unknown}; "
                f"valid: {sorted(self._term_names)}"
            )
        adaptive = self.adaptive_terms
        missing = [name for name in adaptive if name not in losses]
        if missing:
            raise ValueError(
                f"adaptive loss weights need the losses of {missing} at every "
                "optimiser step: pass them to step_optimizer(term_losses=...)"
            )
        values = {name: _as_float(losses[name]) for name in adaptive}
        for name, value in values.items():
            if not math.isfinite(value):
                raise ValueError(
                    f"loss term {name!r} is {value} at optimiser step "
                    f"{self._t + 1}; its adaptive weight cannot be updated"
                )
        for name, value in values.items():
            self._schedules[name].observe(value)
        self._t += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ``t`` and each scheduled term's state."""
        return {
            "t": self._t,
            "terms": {
                name: schedule.get_state() for name, schedule in self._schedules.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output.

        A term scheduled now but absent from ``state`` keeps its fresh state
        (e.g. an adaptive term added when resuming); state of terms no longer
        scheduled is ignored.
        """
        self._t = int(state["t"])
        terms = state.get("terms", {})
        for name, schedule in self._schedules.items():
            if name in terms:
                schedule.load_state(terms[name])


def _as_float(loss: float | torch.Tensor) -> float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(
                "term losses must be scalars, got a tensor of shape "
                f"{tuple(loss.shape)}"
            )
        return float(loss.detach().item())
    return float(loss)


def _check_number(
    value: Any,
    *,
    name: str,
    minimum: float,
    strict: bool = False,
    integer: bool = False,
) -> None:
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{_PATH}: {name} must be {kind}, got {value!r}")
    number = float(cast(float, value))
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        relation = ">" if strict else ">="
        raise ValueError(
            f"{_PATH}: {name} must be finite and {relation} {minimum}, got {value!r}"
        )
