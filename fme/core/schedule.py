"""Schedules: a value as a pure function of ``t``, the steps since it started.

Learning-rate (``fme.core.lr_schedule``) and loss-weight
(``fme.core.loss_weight_schedule``) schedules are these curves. ``t`` counts
optimiser steps (epochs for a learning rate with ``step_each: epoch``); ``v(t)``
is the value used by step ``t + 1``; ``s = min(t, n_steps) / n_steps``.

- ``constant``: ``value``. ``linear``: ``start + (end - start) * s``.
- ``exponential``: ``start * decay_rate ** (t / decay_steps)``, stopping at
  ``end`` if given (a floor when decaying, a ceiling when growing).
- ``cosine``: ``end + (start - end) * (1 + cos(pi * s)) / 2``.
- ``warmup_cosine``: ``linear`` from ``start`` to ``peak`` over
  ``warmup_steps``, then ``cosine`` from ``peak`` to ``end`` over the remaining
  ``n_steps - warmup_steps`` (``n_steps`` counts the warm-up).
- ``piecewise_constant``: ``values[i]``, ``i`` the number of ``boundaries <= t``.
- ``sequential``: member ``i`` from ``milestones[i - 1]`` on, restarted at 0.

Each config surface spells the keys its own way (``Spelling``);
``parse_schedule`` checks a ``{type, kwargs}`` block strictly.
"""

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fme.core.number_check import check_number

Schedule = Callable[[int], float]
_NON_NEGATIVE, _POSITIVE = (0.0, False, False), (0.0, True, False)
# (minimum, exclusive, integer) of every numeric key of every spelling
_KEY_BOUNDS: dict[str, tuple[float, bool, bool]] = {
    **dict.fromkeys(
        ("value", "start", "end", "peak", "lr_start", "lr_end"), _NON_NEGATIVE
    ),
    **dict.fromkeys(("min_lr", "max_lr", "min_value", "max_value"), _NON_NEGATIVE),
    **dict.fromkeys(("ema_decay",), _NON_NEGATIVE),
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
        s = min(t, self.n_steps) / self.n_steps
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * s)) / 2


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
    if n_steps <= warmup_steps:
        raise ValueError(
            f"n_steps ({n_steps}) must exceed warmup_steps ({warmup_steps}); "
            "it counts the warm-up too"
        )
    cosine = Cosine(peak, end, n_steps - warmup_steps)
    if warmup_steps == 0:
        return cosine
    return Sequential((Linear(start, peak, warmup_steps), cosine), (warmup_steps,))


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How one config surface writes the schedules' ``kwargs``.

    Attributes:
        keys: each type's required keys and optional keys with defaults.
        to_canonical: renames of this surface's keys to the curve parameters.
        from_base: per type, the curve parameter set to the surface's base
            value (a learning rate's ``start`` is ``optimization.lr``).
        extra_keys: keys every type also takes, handled by the caller.
        curves: constructors from canonical parameters where a surface
            parametrises a type its own way (default: the classes above).
        not_in_sequential: types that cannot be ``sequential`` members.
    """

    keys: Mapping[str, tuple[tuple[str, ...], Mapping[str, Any]]]
    to_canonical: Mapping[str, str] = dataclasses.field(default_factory=dict)
    from_base: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_keys: tuple[str, ...] = ()
    curves: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    not_in_sequential: tuple[str, ...] = ("sequential",)


_CURVES: dict[str, Callable[..., Any]] = {
    "constant": Constant,
    "linear": Linear,
    "exponential": Exponential,
    "cosine": Cosine,
    "warmup_cosine": warmup_cosine,
}


def parse_schedule(
    type_: str, kwargs: Any, *, path: str, spelling: Spelling, base: float = 1.0
) -> Any:
    """The curve of a ``{type, kwargs}`` block, checked strictly.

    Args:
        type_: a type of ``spelling``.
        kwargs: the block's arguments.
        path: where ``kwargs`` sits in the config, for messages.
        spelling: the surface's keys.
        base: the surface's base value (see ``Spelling.from_base``).

    Raises:
        ValueError: naming the key for an unknown or missing key, a bad number
            or inconsistent values.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path} must be a mapping, got {kwargs!r}")
    required, optional = spelling.keys[type_]
    what = f"type {type_!r}"
    check_keys(kwargs, required, (*optional, *spelling.extra_keys), path, what)
    for key, value in kwargs.items():
        if key in _KEY_BOUNDS:
            low, exclusive, integer = _KEY_BOUNDS[key]
            check_number(
                value,
                path=f"{path}.{key}",
                minimum=low,
                exclusive=exclusive,
                integer=integer,
            )
    values = {
        spelling.to_canonical.get(key, key): value
        for key, value in {**optional, **kwargs}.items()
        if key not in spelling.extra_keys
    }
    if type_ in spelling.from_base:
        values[spelling.from_base[type_]] = base
    if type_ == "piecewise_constant":
        return PiecewiseConstant(*check_piecewise(kwargs, path=path))
    if type_ == "sequential":
        members = check_sequential(kwargs, path=path)
        allowed = sorted(set(spelling.keys) - set(spelling.not_in_sequential))
        for i, (member_type, _) in enumerate(members):
            if member_type not in allowed:
                raise ValueError(
                    f"{path}.schedulers[{i}].type {member_type!r} is unknown; "
                    f"allowed: {allowed}"
                )
        curves = tuple(
            parse_schedule(
                member_type,
                member_kwargs,
                path=f"{path}.schedulers[{i}].kwargs",
                spelling=spelling,
                base=base,
            )
            for i, (member_type, member_kwargs) in enumerate(members)
        )
        return Sequential(curves, tuple(kwargs["milestones"]))
    try:
        return {**_CURVES, **spelling.curves}[type_](**values)
    except ValueError as err:
        names = {v: k for k, v in spelling.to_canonical.items()}
        message = " ".join(names.get(word, word) for word in str(err).split(" "))
        raise ValueError(f"{path}: {message}") from None


def check_keys(
    kwargs: Mapping[str, Any],
    required: Sequence[str],
    optional: Sequence[str],
    path: str,
    what: str,
) -> None:
    """Raise naming ``path`` for keys ``what`` does not take or needs."""
    allowed = sorted({*required, *optional})
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: {what} does not take {unknown}; allowed: {allowed}")
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ValueError(
            f"{path}: {what} needs the missing key(s) {missing}; allowed: {allowed}"
        )


def check_piecewise(
    kwargs: Mapping[str, Any], *, path: str
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``boundaries`` (increasing ints >= 1) and ``values`` (one more, >= 0)."""
    boundaries, values = kwargs["boundaries"], kwargs["values"]
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


def check_sequential(
    kwargs: Mapping[str, Any], *, path: str, extra_keys: Sequence[str] = ()
) -> list[tuple[Any, Mapping[str, Any]]]:
    """``(type, kwargs)`` of the members of a ``sequential`` block's ``kwargs``."""
    check_keys(kwargs, ("schedulers", "milestones"), extra_keys, path, "sequential")
    schedulers, milestones = kwargs["schedulers"], kwargs["milestones"]
    if not isinstance(schedulers, list) or not schedulers:
        raise ValueError(f"{path}.schedulers must be a non-empty list of blocks")
    if not isinstance(milestones, list) or len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"{path}.milestones must be a list of len(schedulers) - 1 = "
            f"{len(schedulers) - 1} step counts, got {milestones!r}"
        )
    check_milestones(milestones, path=f"{path}.milestones")
    members = []
    for i, member in enumerate(schedulers):
        member_path = f"{path}.schedulers[{i}]"
        if not isinstance(member, Mapping):
            raise ValueError(f"{member_path} must be a {{type, kwargs}} mapping")
        check_keys(member, ("type",), ("kwargs",), member_path, "a sequential member")
        members.append((member["type"], member.get("kwargs", {})))
    return members
