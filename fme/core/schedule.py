"""Schedules: a value as a pure function of ``t``, the steps taken on a clock.

Learning-rate schedules (``optimization.scheduler``, see
``fme.core.lr_schedule``) and loss-weight schedules
(``stepper_training.loss_weight_schedules``, see
``fme.core.loss_weight_schedule``) are the same curves. ``t`` counts optimiser
steps (or, for a learning rate with ``step_each: epoch``, epochs) since the
schedule started. ``v(t)`` is the value used by step ``t + 1``:

- ``constant``: ``v(t) = value``.
- ``linear``: ``v(t) = start + (end - start) * min(t, n_steps) / n_steps``.
- ``exponential``: ``v(t) = start * decay_rate ** (t / decay_steps)``; with
  ``end`` it stops there (a floor when decaying, a ceiling when growing).
- ``cosine``: ``v(t) = end + (start - end) * (1 + cos(pi * s)) / 2`` with
  ``s = min(t, n_steps) / n_steps``.
- ``warmup_cosine``: ``linear`` from ``start`` to ``peak`` over
  ``warmup_steps``, then ``cosine`` from ``peak`` to ``end`` over the remaining
  ``n_steps - warmup_steps`` (``n_steps`` counts the warm-up too).
- ``piecewise_constant``: ``v(t) = values[i]`` with ``i`` the number of
  ``boundaries`` that are ``<= t``.
- ``sequential``: ``v(t) = schedulers[i](t - milestones[i - 1])`` with ``i`` the
  number of ``milestones`` that are ``<= t`` (each member restarts at 0).

Each config surface spells the curves' parameters its own way (a learning
rate's ``start`` is ``optimization.lr``; see ``Spelling``); ``parse_schedule``
checks a block strictly against its spelling and returns the curve.
"""

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fme.core.number_check import check_number

Schedule = Callable[[int], float]

# Bounds of every numeric key of every spelling: (minimum, exclusive, integer).
_NON_NEGATIVE = (0.0, False, False)
_POSITIVE = (0.0, True, False)
_KEY_BOUNDS: dict[str, tuple[float, bool, bool]] = {
    **dict.fromkeys(
        ("value", "start", "end", "peak", "lr_start", "lr_end", "min_lr", "max_lr"),
        _NON_NEGATIVE,
    ),
    **dict.fromkeys(("min_value", "max_value", "ema_decay"), _NON_NEGATIVE),
    **dict.fromkeys(("decay_rate", "decay_steps", "target"), _POSITIVE),
    **dict.fromkeys(("n_steps", "total_steps"), (1, False, True)),
    "warmup_steps": (0, False, True),
}


@dataclasses.dataclass(frozen=True)
class Constant:
    """``v(t) = value``."""

    value: float

    def __call__(self, t: int) -> float:
        return self.value


@dataclasses.dataclass(frozen=True)
class Linear:
    """``start`` to ``end`` in ``n_steps``, then ``end``."""

    start: float
    end: float
    n_steps: int

    def __call__(self, t: int) -> float:
        return (
            self.start + (self.end - self.start) * min(t, self.n_steps) / self.n_steps
        )


@dataclasses.dataclass(frozen=True)
class Exponential:
    """``start * decay_rate ** (t / decay_steps)``, stopping at ``end`` if set."""

    start: float
    decay_rate: float
    decay_steps: float
    end: float | None = None

    def __call__(self, t: int) -> float:
        try:
            value = self.start * self.decay_rate ** (t / self.decay_steps)
        except OverflowError:
            value = math.inf
        if self.end is None:
            return value
        return max(self.end, value) if self.decay_rate <= 1 else min(self.end, value)


@dataclasses.dataclass(frozen=True)
class Cosine:
    """Half a cosine from ``start`` to ``end`` in ``n_steps``, then ``end``."""

    start: float
    end: float
    n_steps: int

    def __call__(self, t: int) -> float:
        fraction = min(t, self.n_steps) / self.n_steps
        return (
            self.end + (self.start - self.end) * (1 + math.cos(math.pi * fraction)) / 2
        )


@dataclasses.dataclass(frozen=True)
class PiecewiseConstant:
    """``values[i]``, ``i`` the number of ``boundaries <= t``."""

    boundaries: tuple[int, ...]
    values: tuple[float, ...]

    def __call__(self, t: int) -> float:
        return self.values[bisect.bisect_right(self.boundaries, t)]


@dataclasses.dataclass(frozen=True)
class Sequential:
    """``schedules[i]`` from ``milestones[i - 1]`` on, restarted at 0."""

    schedules: tuple[Schedule, ...]
    milestones: tuple[int, ...]

    def __call__(self, t: int) -> float:
        i = bisect.bisect_right(self.milestones, t)
        return self.schedules[i](t - (self.milestones[i - 1] if i else 0))


def warmup_cosine(
    *, start: float, peak: float, end: float, warmup_steps: int, n_steps: int
) -> Schedule:
    """Linear warm-up from ``start`` to ``peak``, then cosine to ``end``."""
    cosine = Cosine(peak, end, n_steps - warmup_steps)
    if warmup_steps == 0:
        return cosine
    return Sequential((Linear(start, peak, warmup_steps), cosine), (warmup_steps,))


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How one config surface writes the schedules.

    Attributes:
        keys: for each type, its required keys and its optional keys with
            their defaults.
        to_canonical: renames of this surface's keys to the curve parameters.
        from_base: for each type, the curve parameter set to the surface's
            base value (a learning rate's ``start`` is ``optimization.lr``).
        extra_keys: keys every type also takes, handled by the caller (the
            learning rate's clamps); checked as numbers here.
        curves: the curve of a type from its canonical parameters, where a
            surface parametrises the type differently (default: the classes).
        not_in_sequential: types that cannot be members of ``sequential``.
    """

    keys: Mapping[str, tuple[tuple[str, ...], Mapping[str, Any]]]
    to_canonical: Mapping[str, str] = dataclasses.field(default_factory=dict)
    from_base: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_keys: tuple[str, ...] = ()
    curves: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    not_in_sequential: tuple[str, ...] = ("sequential",)


def parse_schedule(
    type_: str,
    params: Mapping[str, Any],
    *,
    path: str,
    spelling: Spelling,
    base: float = 1.0,
) -> Schedule:
    """The curve of a ``{type, <params>}`` block, checked strictly.

    Args:
        type_: a type of ``spelling``.
        params: the block's keys and values (without ``type``).
        path: where the parameters sit in the config, for messages.
        spelling: the surface's keys.
        base: the surface's base value (see ``Spelling.from_base``).

    Raises:
        ValueError: naming the key for an unknown or missing key, a bad number
            or inconsistent values.
    """
    required, optional = spelling.keys[type_]
    check_keys(
        params,
        required=required,
        optional=(*optional, *spelling.extra_keys),
        path=path,
        what=f"type {type_!r}",
    )
    for key, value in params.items():
        if key in _KEY_BOUNDS:
            minimum, exclusive, integer = _KEY_BOUNDS[key]
            check_number(
                value,
                path=f"{path}.{key}",
                minimum=minimum,
                exclusive=exclusive,
                integer=integer,
            )
    values = {
        spelling.to_canonical.get(key, key): value
        for key, value in {**optional, **params}.items()
        if key not in spelling.extra_keys
    }
    if type_ in spelling.from_base:
        values[spelling.from_base[type_]] = base
    if type_ == "sequential":
        return _parse_sequential(values, path=path, spelling=spelling, base=base)
    if type_ == "piecewise_constant":
        return PiecewiseConstant(*check_piecewise(params, path=path))
    if type_ == "warmup_cosine" and values["n_steps"] <= values["warmup_steps"]:
        total = spelling_of("n_steps", spelling)
        raise ValueError(
            f"{path}.{total} ({values['n_steps']}) must exceed warmup_steps "
            f"({values['warmup_steps']}); {total} counts the warm-up too"
        )
    try:
        return {**_CURVES, **spelling.curves}[type_](**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_keys(
    params: Mapping[str, Any],
    *,
    required: Sequence[str],
    optional: Sequence[str],
    path: str,
    what: str,
) -> None:
    """Raise naming ``path`` for keys ``what`` does not take or needs."""
    allowed = sorted({*required, *optional})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: {what} does not take {unknown}; allowed: {allowed}")
    missing = [key for key in required if key not in params]
    if missing:
        raise ValueError(
            f"{path}: {what} needs the missing key(s) {missing}; allowed: {allowed}"
        )


def spelling_of(canonical: str, spelling: Spelling) -> str:
    """The surface's name of a curve parameter."""
    names = [k for k, v in spelling.to_canonical.items() if v == canonical]
    return names[0] if names else canonical


_CURVES: dict[str, Callable[..., Schedule]] = {
    "constant": Constant,
    "linear": Linear,
    "exponential": Exponential,
    "cosine": Cosine,
    "warmup_cosine": warmup_cosine,
}


def check_piecewise(
    params: Mapping[str, Any], *, path: str
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``boundaries`` (increasing ints >= 1) and ``values`` (one more, >= 0)."""
    boundaries, values = params["boundaries"], params["values"]
    if not isinstance(boundaries, list) or not isinstance(values, list):
        raise ValueError(f"{path}.boundaries and {path}.values must be lists")
    check_milestones(boundaries, path=f"{path}.boundaries")
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"{path}.values needs len(boundaries) + 1 = {len(boundaries) + 1} "
            f"entries, got {len(values)}"
        )
    for i, value in enumerate(values):
        check_number(value, path=f"{path}.values[{i}]", minimum=0.0)
    return tuple(boundaries), tuple(float(v) for v in values)


def check_milestones(milestones: Sequence[Any], *, path: str) -> None:
    """Step counts at which a schedule changes: strictly increasing ints >= 1."""
    for i, milestone in enumerate(milestones):
        check_number(milestone, path=f"{path}[{i}]", minimum=1, integer=True)
    if any(a >= b for a, b in zip(milestones[:-1], milestones[1:], strict=True)):
        raise ValueError(f"{path} must be strictly increasing, got {list(milestones)}")


def check_sequential_lists(schedules: Any, milestones: Any, *, path: str) -> None:
    """A non-empty list of member blocks and ``len(schedules) - 1`` milestones."""
    if not isinstance(schedules, list) or not schedules:
        raise ValueError(f"{path}.schedulers must be a non-empty list of blocks")
    if not isinstance(milestones, list) or len(milestones) != len(schedules) - 1:
        raise ValueError(
            f"{path}.milestones must be a list of len(schedulers) - 1 = "
            f"{len(schedules) - 1} step counts, got {milestones!r}"
        )
    check_milestones(milestones, path=f"{path}.milestones")


def _parse_sequential(
    values: Mapping[str, Any], *, path: str, spelling: Spelling, base: float
) -> Schedule:
    schedules, milestones = values["schedulers"], values["milestones"]
    check_sequential_lists(schedules, milestones, path=path)
    members = []
    for i, child in enumerate(schedules):
        child_path = f"{path}.schedulers[{i}]"
        types = sorted(set(spelling.keys) - set(spelling.not_in_sequential))
        if not isinstance(child, Mapping) or child.get("type") not in types:
            raise ValueError(f"{child_path} must be a block with a type of {types}")
        params = {k: v for k, v in child.items() if k != "type"}
        members.append(
            parse_schedule(
                child["type"], params, path=child_path, spelling=spelling, base=base
            )
        )
    return Sequential(tuple(members), tuple(milestones))


class OptimizerClock:
    """The run's count of optimiser steps, the one clock every schedule reads.

    ``fme.core.optimization.Optimization`` owns it and ticks it once per
    optimiser step; it is saved once in the checkpoint (as
    ``optimization.optimizer_steps``). A schedule starts at the clock's value
    when it is built and reads its ``t`` as the steps taken since.

    Args:
        step: the optimiser steps already taken (a later training phase).
    """

    def __init__(self, step: int = 0):
        self._step = int(step)

    @property
    def step(self) -> int:
        """Optimiser steps taken so far."""
        return self._step

    def tick(self) -> None:
        """Count one optimiser step."""
        self._step += 1

    def load(self, step: int) -> None:
        """Set the count from a checkpoint."""
        self._step = int(step)
