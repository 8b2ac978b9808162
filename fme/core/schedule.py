"""Schedules: a value as a pure function of ``t``, the steps since it started.

Learning-rate (``fme.core.lr_schedule``) and loss-weight
(``fme.core.loss_weight_schedule``) schedules are these curves; ``t`` counts
optimiser steps (or a learning rate's epochs) and ``v(t)`` is the value of step
``t + 1``. With ``s = min(t, n_steps) / n_steps``:

- ``constant``: ``value``; ``linear``: ``start + (end - start) * s``;
- ``exponential``: ``start * decay_rate ** (t / decay_steps)``, stopping at
  ``end`` if given (a floor when decaying, a ceiling when growing);
- ``cosine``: ``end + (start - end) * (1 + cos(pi * s)) / 2``;
- ``warmup_cosine``: ``linear`` from ``start`` to ``peak`` in ``warmup_steps``,
  then ``cosine`` to ``end`` in the other ``n_steps - warmup_steps``;
- ``piecewise_constant``: ``values[i]``, ``i`` the number of ``boundaries <= t``;
- ``sequential``: member ``i`` from ``milestones[i - 1]`` on, restarted at 0.

Each config surface spells the ``kwargs`` its own way (``Spelling``);
``parse_schedule`` checks a ``{type, kwargs}`` block strictly.
"""

import bisect
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fme.core.number_check import check_number

Schedule = Callable[[int], float]
# (minimum, exclusive, integer) of the numeric keys of every spelling
_BOUNDS = {
    **dict.fromkeys(
        "value start end peak lr_start lr_end min_lr max_lr min_value max_value "
        "ema_decay".split(),
        (0.0, False, False),
    ),
    **dict.fromkeys(("decay_rate", "decay_steps", "target"), (0.0, True, False)),
    **dict.fromkeys(("n_steps", "total_steps"), (1, False, True)),
    "warmup_steps": (0, False, True),
}


def constant(value: float) -> Schedule:
    """``v(t) = value``."""
    return lambda t: value


def linear(start: float, end: float, n_steps: int) -> Schedule:
    """``start`` to ``end`` in ``n_steps``, then ``end``."""
    return lambda t: start + (end - start) * min(t, n_steps) / n_steps


def exponential(
    start: float, decay_rate: float, decay_steps: float, end: float | None = None
) -> Schedule:
    """``start * decay_rate ** (t / decay_steps)``, stopping at ``end`` if set."""
    stop = (max if decay_rate <= 1 else min) if end is not None else None

    def value(t: int) -> float:
        try:
            v = start * decay_rate ** (t / decay_steps)
        except OverflowError:
            v = math.inf
        return v if stop is None else stop(end, v)

    return value


def cosine(start: float, end: float, n_steps: int) -> Schedule:
    """Half a cosine from ``start`` to ``end`` in ``n_steps``, then ``end``."""
    return lambda t: (
        end + (start - end) * (1 + math.cos(math.pi * min(t, n_steps) / n_steps)) / 2
    )


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[i]``, ``i`` the number of ``boundaries <= t``."""
    return lambda t: values[bisect.bisect_right(boundaries, t)]


def sequential(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``schedules[i]`` from ``milestones[i - 1]`` on, restarted at 0."""

    def value(t: int) -> float:
        i = bisect.bisect_right(milestones, t)
        return schedules[i](t - (milestones[i - 1] if i else 0))

    return value


def warmup_cosine(
    *, start: float, peak: float, end: float, warmup_steps: int, n_steps: int
) -> Schedule:
    """Linear warm-up from ``start`` to ``peak``, then cosine to ``end``."""
    if n_steps <= warmup_steps:
        raise ValueError(
            f"n_steps ({n_steps}) must exceed warmup_steps ({warmup_steps}); "
            "it counts the warm-up too"
        )
    decay = cosine(peak, end, n_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    return sequential([linear(start, peak, warmup_steps), decay], [warmup_steps])


@dataclasses.dataclass(frozen=True)
class Spelling:
    """How one config surface writes the ``kwargs`` of the curves.

    Attributes:
        keys: each type's required keys and optional keys with defaults.
        to_canonical: renames of this surface's keys to the curves' arguments.
        from_base: per type, the argument set to the surface's base value.
        extra_keys: keys every type also takes, handled by the caller.
        curves: each type's curve from its (canonical) arguments.
        not_in_sequential: types that cannot be ``sequential`` members.
    """

    keys: Mapping[str, tuple[tuple[str, ...], Mapping[str, Any]]]
    curves: Mapping[str, Callable[..., Any]]
    to_canonical: Mapping[str, str] = dataclasses.field(default_factory=dict)
    from_base: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra_keys: tuple[str, ...] = ()
    not_in_sequential: tuple[str, ...] = ("sequential",)


CURVES: dict[str, Callable[..., Any]] = {
    "constant": constant,
    "linear": linear,
    "exponential": exponential,
    "cosine": cosine,
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
    extra = spelling.extra_keys
    check_keys(kwargs, required, (*optional, *extra), path, f"type {type_!r}")
    for key in set(kwargs) & set(_BOUNDS):
        low, exclusive, integer = _BOUNDS[key]
        check_number(
            kwargs[key],
            path=f"{path}.{key}",
            minimum=low,
            exclusive=exclusive,
            integer=integer,
        )
    if type_ == "piecewise_constant":
        return piecewise_constant(*check_piecewise(kwargs, path=path))
    if type_ == "sequential":
        allowed = sorted(set(spelling.keys) - set(spelling.not_in_sequential))
        members = []
        for i, (member, member_kwargs) in enumerate(check_sequential(kwargs, path)):
            if member not in allowed:
                raise ValueError(
                    f"{path}.schedulers[{i}].type {member!r} is unknown; "
                    f"allowed: {allowed}"
                )
            member_path = f"{path}.schedulers[{i}].kwargs"
            members.append(
                parse_schedule(
                    member, member_kwargs, path=member_path, spelling=spelling
                )
            )
        return sequential(members, kwargs["milestones"])
    values = {
        spelling.to_canonical.get(k, k): v
        for k, v in {**optional, **kwargs}.items()
        if k not in extra
    }
    if type_ in spelling.from_base:
        values[spelling.from_base[type_]] = base
    try:
        return spelling.curves[type_](**values)
    except ValueError as err:  # name the keys as this surface spells them
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
    missing = [key for key in required if key not in kwargs]
    if unknown:
        raise ValueError(f"{path}: {what} does not take {unknown}; allowed: {allowed}")
    if missing:
        raise ValueError(f"{path}: {what} needs the missing key(s) {missing}")


def check_piecewise(
    kwargs: Mapping[str, Any], *, path: str
) -> tuple[list[int], list[float]]:
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
    return boundaries, [float(v) for v in values]


def check_milestones(milestones: Sequence[Any], *, path: str) -> None:
    """Step counts at which a schedule changes: strictly increasing ints >= 1."""
    for i, milestone in enumerate(milestones):
        check_number(milestone, path=f"{path}[{i}]", minimum=1, integer=True)
    if any(a >= b for a, b in zip(milestones[:-1], milestones[1:], strict=True)):
        raise ValueError(f"{path} must be strictly increasing, got {list(milestones)}")


def check_sequential(kwargs: Mapping[str, Any], path: str) -> list[tuple[Any, Any]]:
    """``(type, kwargs)`` of the members of a ``sequential`` block's ``kwargs``."""
    check_keys(kwargs, ("schedulers", "milestones"), (), path, "type 'sequential'")
    members, milestones = kwargs["schedulers"], kwargs["milestones"]
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}.schedulers must be a non-empty list of blocks")
    if not isinstance(milestones, list) or len(milestones) != len(members) - 1:
        raise ValueError(
            f"{path}.milestones must be a list of len(schedulers) - 1 = "
            f"{len(members) - 1} step counts, got {milestones!r}"
        )
    check_milestones(milestones, path=f"{path}.milestones")
    for i, member in enumerate(members):
        if not isinstance(member, Mapping):
            raise ValueError(f"{path}.schedulers[{i}] must be a {{type, kwargs}} block")
        check_keys(
            member, ("type",), ("kwargs",), f"{path}.schedulers[{i}]", "a member"
        )
    return [(member["type"], member.get("kwargs", {})) for member in members]
