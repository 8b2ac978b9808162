"""Schedules: a value as a pure function of ``t``, the steps since it started.

The curves of learning-rate (``fme.core.lr_schedule``) and loss-weight
(``fme.core.loss_weight_schedule``) schedules and the one parser of their
``{type, kwargs}`` blocks (keys in the README). ``v(t)`` is the value of step
``t + 1``.
"""

import bisect
import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fme.core.number_check import check_number

Schedule = Callable[[int], float]
# numbers by key: a count is an integer >= 1 (warmup_steps >= 0), these are
# > 0, any other >= 0; lists are checked item by item, steps must increase
_COUNTS = {"n_steps": 1, "total_steps": 1, "boundaries": 1, "milestones": 1}
_COUNTS["warmup_steps"] = 0
_POSITIVE = ("decay_rate", "decay_steps", "target")
_LISTS = ("values", "boundaries", "milestones")


def constant(value: float) -> Schedule:
    """``v(t) = value``."""
    return lambda t: float(value)


def linear(start: float, end: float, n_steps: int) -> Schedule:
    """``start`` to ``end`` in ``n_steps``, then ``end``."""
    return lambda t: start + (end - start) * min(t, n_steps) / n_steps


def exponential(
    start: float, decay_rate: float, decay_steps: float, end: float | None = None
) -> Schedule:
    """``start * decay_rate ** (t / decay_steps)``, stopping at ``end`` if set
    (a floor when ``decay_rate <= 1``, else a ceiling)."""
    stop = max if decay_rate <= 1 else min

    def value(t: int) -> float:
        try:
            v = start * decay_rate ** (t / decay_steps)
        except OverflowError:
            v = math.inf
        return v if end is None else stop(end, v)

    return value


def cosine(start: float, end: float, n_steps: int) -> Schedule:
    """Half a cosine from ``start`` to ``end`` in ``n_steps``, then ``end``."""
    return lambda t: (
        end + (start - end) * (1 + math.cos(math.pi * min(t, n_steps) / n_steps)) / 2
    )


def warmup_cosine(
    *, start: float, peak: float, end: float, warmup_steps: int, n_steps: int
) -> Schedule:
    """``linear`` from ``start`` to ``peak`` in ``warmup_steps``, then
    ``cosine`` to ``end`` in the other ``n_steps - warmup_steps``."""
    if n_steps <= warmup_steps:
        raise ValueError(
            f"the step count ({n_steps}) must exceed warmup_steps ({warmup_steps}); "
            "it counts the warm-up too"
        )
    decay = cosine(peak, end, n_steps - warmup_steps)
    # with no warm-up the linear member is never evaluated
    return sequential([linear(start, peak, warmup_steps), decay], [warmup_steps])


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """``values[i]``, ``i`` the number of ``boundaries <= t`` (increasing)."""
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values needs len(boundaries) + 1 = {len(boundaries) + 1} entries, "
            f"got {len(values)}"
        )
    floats = [float(v) for v in values]
    return lambda t: floats[bisect.bisect_right(boundaries, t)]


def sequential(schedulers: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """``schedulers[i]`` from ``milestones[i - 1]`` on, restarted at 0."""

    def value(t: int) -> float:
        i = bisect.bisect_right(milestones, t)
        return schedulers[i](t - (milestones[i - 1] if i else 0))

    return value


def clip(value: float, low: float | None, high: float | None) -> float:
    """``value`` limited to ``[low, high]``; ``None`` is no limit."""
    value = value if low is None else max(low, value)
    return value if high is None else min(high, value)


_ALL = (constant, linear, exponential, cosine, warmup_cosine, piecewise_constant)
CURVES: dict[str, Callable[..., Schedule]] = {f.__name__: f for f in _ALL}
CURVES["sequential"] = sequential


def parse_schedule(
    type_: Any,
    kwargs: Any,
    *,
    path: str,
    types: Mapping[str, Callable[..., Any]],
    member: Callable[[Any, Any, str], Any] | None = None,
    extra: Sequence[str] = (),
) -> Any:
    """``types[type_](**kwargs)``: the schedule of a ``{type, kwargs}`` block.

    A type's keys are its function's parameters (required if without a
    default) plus ``extra`` (taken out by the caller); ``member(type, kwargs,
    path)`` builds a ``sequential`` member. Errors name the key path.
    """
    if type_ not in types:
        raise ValueError(f"{path}.type {type_!r} is unknown; allowed: {list(types)}")
    params = inspect.signature(types[type_]).parameters.values()
    required = [p.name for p in params if p.default is p.empty]
    path = f"{path}.kwargs"
    check_keys(kwargs, required, [*(p.name for p in params), *extra], path)
    check_numbers(kwargs, path=path)
    kwargs = dict(kwargs)
    if type_ == "sequential":
        blocks, milestones = kwargs["schedulers"], kwargs["milestones"]
        if not isinstance(blocks, list) or not blocks:
            raise ValueError(f"{path}.schedulers must be a non-empty list of blocks")
        if len(milestones) != len(blocks) - 1:
            raise ValueError(
                f"{path}.milestones must be len(schedulers) - 1 = {len(blocks) - 1} "
                f"step counts, got {milestones!r}"
            )
        assert member is not None, "a surface with sequential parses its members"
        kwargs["schedulers"] = []
        for i, block in enumerate(blocks):
            block_path = f"{path}.schedulers[{i}]"
            check_keys(block, ("type",), ("type", "kwargs"), block_path)
            kwargs["schedulers"].append(
                member(block["type"], block.get("kwargs", {}), block_path)
            )
    try:
        return types[type_](**kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def check_keys(
    kwargs: Any, required: Sequence[str], allowed: Sequence[str], path: str
) -> None:
    """Raise naming ``path`` unless ``kwargs`` is a mapping of allowed keys."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{path} must be a mapping, got {kwargs!r}")
    unknown = sorted(set(kwargs) - set(allowed))
    missing = [key for key in required if key not in kwargs]
    if unknown:
        raise ValueError(f"{path} does not take {unknown}; allowed: {sorted(allowed)}")
    if missing:
        raise ValueError(f"{path} needs the missing key(s) {missing}")


def check_numbers(kwargs: Mapping[str, Any], *, path: str) -> None:
    """Check the numbers of ``kwargs`` by key name (bounds, order, min <= max)."""
    for key in set(kwargs) - {"schedulers"}:
        items = kwargs[key] if key in _LISTS else [kwargs[key]]
        if not isinstance(items, list):
            raise ValueError(f"{path}.{key} must be a list, got {items!r}")
        for i, item in enumerate(items):
            check_number(
                item,
                path=f"{path}.{key}" + (f"[{i}]" if key in _LISTS else ""),
                minimum=_COUNTS.get(key, 0.0),
                exclusive=key in _POSITIVE,
                integer=key in _COUNTS,
            )
        if key in _COUNTS and any(a >= b for a, b in itertools.pairwise(items)):
            raise ValueError(f"{path}.{key} must be strictly increasing, got {items}")
    for low, high in (("min_lr", "max_lr"), ("min_value", "max_value")):
        if low in kwargs and high in kwargs and kwargs[low] > kwargs[high]:
            raise ValueError(
                f"{path}: {low} ({kwargs[low]}) must not exceed {high} ({kwargs[high]})"
            )
