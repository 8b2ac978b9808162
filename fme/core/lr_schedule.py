"""Learning-rate schedules on the optimiser-step clock.

ACE's ``optimization.scheduler: {type: <torch.optim.lr_scheduler class>,
kwargs: {...}}`` block stays, and the same block also takes named shorthands.
Every schedule is a ``torch.optim.lr_scheduler`` object (``LambdaLR`` for the
shorthands, ``SequentialLR`` for ``sequential``), so its state dict checkpoints.

Notation used in the docstrings: ``t`` is the number of steps the schedule has
taken so far (optimiser steps by default, epochs with ``step_each: epoch``);
``lr(t)`` is the learning rate the next step, step ``t + 1``, uses; ``lr0`` is
``optimization.lr``.

Shorthands (``lr(t)`` before the optional clamps):

- ``constant``: ``lr(t) = lr0``.
- ``exponential``: ``lr(t) = max(lr_end, lr0 * decay_rate ** (t / decay_steps))``.
- ``cosine``: ``lr(t) = lr_end + (lr0 - lr_end) * (1 + cos(pi * min(t, T) / T)) / 2``
  with ``T = total_steps``.
- ``warmup_cosine``: ``lr(t) = lr_start + (lr0 - lr_start) * t / W`` for
  ``t < W = warmup_steps``, then the cosine above from ``lr0`` to ``lr_end``
  over the remaining ``T - W`` steps:
  ``lr(t) = lr_end + (lr0 - lr_end) * (1 + cos(pi * min(t - W, T - W) / (T - W))) / 2``.
- ``piecewise_constant``: ``lr(t) = values[i]`` with ``i`` the number of
  ``boundaries`` that are ``<= t`` (so ``values[0]`` before ``boundaries[0]``).

Every top-level schedule (shorthand, torch class or ``sequential``) takes
``min_lr`` / ``max_lr`` in its ``kwargs``:
``lr_clamped(t) = min(max_lr, max(min_lr, lr(t)))``. The clamp acts on the
learning rate the optimiser sees; the underlying schedule keeps evolving
unclamped (a chainable torch scheduler continues from its unclamped value).

With several optimiser parameter groups, a shorthand scales each group's
initial learning rate by ``lr(t) / lr0``; clamps apply to each group's
absolute learning rate. Where a torch class has its own argument called
``min_lr`` or ``max_lr`` (``ReduceLROnPlateau``, ``CyclicLR``, ``OneCycleLR``),
that key goes to the class, not to the clamp.
"""

import bisect
import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch.optim import lr_scheduler as torch_lr

SHORTHAND_TYPES = (
    "constant",
    "exponential",
    "cosine",
    "warmup_cosine",
    "piecewise_constant",
)
SEQUENTIAL_TYPE = "sequential"
STEP_EACH_OPTIONS = ("optimizer_step", "epoch")
_CLAMP_KEYS = ("min_lr", "max_lr")
_PATH = "optimization.scheduler"

# (required keys, optional keys with defaults) of each shorthand, clamps excluded.
_SHORTHAND_KWARGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "constant": ((), {}),
    "exponential": (("decay_rate", "decay_steps"), {"lr_end": 0.0}),
    "cosine": (("total_steps",), {"lr_end": 0.0}),
    "warmup_cosine": (
        ("warmup_steps", "total_steps"),
        {"lr_start": 0.0, "lr_end": 0.0},
    ),
    "piecewise_constant": (("boundaries", "values"), {}),
}

# torch.optim.lr_scheduler classes that cannot be configured from YAML.
_UNSUPPORTED_TORCH = {
    "LRScheduler": "it is the abstract base class",
    "_LRScheduler": "it is the abstract base class",
    "LambdaLR": "it needs a Python callable; use a shorthand instead",
    "MultiplicativeLR": "it needs a Python callable; use a shorthand instead",
    "SequentialLR": "it needs scheduler objects; use type: sequential instead",
    "ChainedScheduler": "it needs scheduler objects; use type: sequential instead",
}
_NEEDS_METRIC = ("ReduceLROnPlateau",)


@dataclasses.dataclass
class SchedulerConfig:
    """ACE's ``optimization.scheduler`` block.

    Attributes:
        type: ``None`` (constant ``optimization.lr``, no scheduler), a shorthand
            (``constant``, ``exponential``, ``cosine``, ``warmup_cosine``,
            ``piecewise_constant``; see the module docstring for their
            formulas), ``sequential``, or the name of any class in
            ``torch.optim.lr_scheduler`` (e.g. ``CosineAnnealingLR``,
            ``StepLR``).
        kwargs: the schedule's arguments. Shorthands take exactly their keys
            (``exponential``: ``decay_rate``, ``decay_steps``, ``lr_end=0``;
            ``cosine``: ``total_steps``, ``lr_end=0``; ``warmup_cosine``:
            ``warmup_steps``, ``total_steps``, ``lr_start=0``, ``lr_end=0``;
            ``piecewise_constant``: ``boundaries`` (increasing positive ints),
            ``values`` (absolute learning rates, one more than boundaries);
            ``constant``: none). A torch class takes its constructor's keyword
            arguments (without ``optimizer``). ``sequential`` takes
            ``schedulers`` (a list of ``{type, kwargs}`` blocks, torch classes
            or shorthands) and ``milestones`` (``len(schedulers) - 1``
            increasing step counts at which the next scheduler takes over), as
            ``torch.optim.lr_scheduler.SequentialLR``. Every type except
            ``None`` also takes ``min_lr`` and ``max_lr`` clamps.
        step_each: the schedule's clock, ``optimizer_step`` (the default: one
            step per optimiser step, never per micro-step of an accumulated
            rollout) or ``epoch`` (ACE's default, one step per epoch).
        step_each_iteration: ACE's spelling of ``step_each``: ``true`` means
            ``optimizer_step``, ``false`` means ``epoch``. Give at most one of
            the two.
    """

    type: str | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    step_each: str | None = None
    step_each_iteration: bool | None = None

    def __post_init__(self):
        if self.step_each is not None and self.step_each not in STEP_EACH_OPTIONS:
            raise ValueError(
                f"{_PATH}.step_each {self.step_each!r} is unknown; "
                f"allowed: {list(STEP_EACH_OPTIONS)}"
            )
        if self.step_each is not None and self.step_each_iteration is not None:
            raise ValueError(
                f"{_PATH}: give step_each or ACE's step_each_iteration, not both"
            )
        if self.type is None:
            if self.kwargs:
                raise ValueError(
                    f"{_PATH}.kwargs {sorted(self.kwargs)} given without a type; "
                    f"set {_PATH}.type to one of {_allowed_types_text()}"
                )
            return
        _validate_schedule(self.type, self.kwargs, path=_PATH, top_level=True)
        if self.type in _NEEDS_METRIC and self.resolved_step_each != "epoch":
            raise ValueError(
                f"{_PATH}.type {self.type} steps on the validation loss, so it needs "
                f"{_PATH}.step_each: epoch"
            )

    @property
    def resolved_step_each(self) -> str:
        """``step_each`` after applying ACE's ``step_each_iteration`` and defaults."""
        if self.step_each is not None:
            return self.step_each
        if self.step_each_iteration is not None:
            return "optimizer_step" if self.step_each_iteration else "epoch"
        return "optimizer_step"

    def build(self, optimizer: torch.optim.Optimizer, *, lr0: float) -> "LRSchedule":
        """The schedule driving ``optimizer``'s learning rate.

        Args:
            optimizer: the optimiser, freshly built with learning rate ``lr0``.
            lr0: ``optimization.lr``, the base of the shorthands.

        Raises:
            ValueError: if a torch class rejects its kwargs, naming
                ``optimization.scheduler.kwargs``.
        """
        if self.type is None:
            return LRSchedule(
                optimizer=optimizer, scheduler=None, step_each=self.resolved_step_each
            )
        kwargs = dict(self.kwargs)
        clamps = {key: kwargs.pop(key, None) for key in _clamp_keys_of(self.type)}
        scheduler = _build_scheduler(
            self.type, kwargs, optimizer=optimizer, lr0=lr0, path=_PATH
        )
        return LRSchedule(
            optimizer=optimizer,
            scheduler=scheduler,
            step_each=self.resolved_step_each,
            min_lr=clamps.get("min_lr"),
            max_lr=clamps.get("max_lr"),
        )


class LRSchedule:
    """A torch learning-rate scheduler on a chosen clock, with optional clamps.

    ``t`` is the number of times the schedule advanced; the optimiser's learning
    rate is then ``lr(t)`` (see the module docstring), the rate of step
    ``t + 1``.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        scheduler: the torch scheduler, or ``None`` for a constant rate.
        step_each: ``optimizer_step`` or ``epoch``.
        min_lr: lower clamp of every group's learning rate, if any.
        max_lr: upper clamp of every group's learning rate, if any.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: torch_lr.LRScheduler | None,
        step_each: str,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ):
        if step_each not in STEP_EACH_OPTIONS:
            raise ValueError(
                f"step_each must be one of {list(STEP_EACH_OPTIONS)}, got {step_each!r}"
            )
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._step_each = step_each
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._t = 0
        self._apply_clamps()

    @property
    def step_each(self) -> str:
        """The schedule's clock: ``optimizer_step`` or ``epoch``."""
        return self._step_each

    @property
    def t(self) -> int:
        """Steps the schedule has taken on its clock."""
        return self._t

    @property
    def needs_metric(self) -> bool:
        """Whether ``step_epoch`` needs the validation loss (ReduceLROnPlateau)."""
        return isinstance(self._scheduler, torch_lr.ReduceLROnPlateau)

    @property
    def current_lr(self) -> float:
        """The learning rate of the first parameter group, used by the next step."""
        return float(self._optimizer.param_groups[0]["lr"])

    def step_optimizer(self) -> None:
        """Call once after each optimiser step; advances if ``step_each`` is it."""
        if self._step_each == "optimizer_step":
            self._advance(None)

    def step_epoch(self, metric: float | None = None) -> None:
        """Call once at the end of each epoch; advances if ``step_each == epoch``.

        Args:
            metric: the validation loss, required when ``needs_metric``.
        """
        if self._step_each == "epoch":
            if self.needs_metric and metric is None:
                raise ValueError(
                    "ReduceLROnPlateau needs the validation loss: call "
                    "step_epoch(metric=<validation loss>)"
                )
            self._advance(metric)

    def state_dict(self) -> dict[str, Any]:
        """The clock and the torch scheduler's state dict."""
        return {
            "t": self._t,
            "scheduler": (
                None if self._scheduler is None else self._scheduler.state_dict()
            ),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output and set the optimiser's rates from it.

        A state without a scheduler (saved with ``type: None``) leaves a
        configured scheduler at its start.
        """
        self._t = int(state.get("t", 0))
        scheduler_state = state.get("scheduler")
        if self._scheduler is not None and scheduler_state is not None:
            self._scheduler.load_state_dict(scheduler_state)
            for group, lr in zip(
                self._optimizer.param_groups,
                self._scheduler.get_last_lr(),
                strict=True,
            ):
                group["lr"] = lr
            self._apply_clamps()

    def _advance(self, metric: float | None) -> None:
        self._t += 1
        if self._scheduler is None:
            return
        if self._clamped:
            # Let the scheduler continue from its own (unclamped) values.
            for group, lr in zip(
                self._optimizer.param_groups,
                self._scheduler.get_last_lr(),
                strict=True,
            ):
                group["lr"] = lr
        if isinstance(self._scheduler, torch_lr.ReduceLROnPlateau):
            assert metric is not None
            self._scheduler.step(metric)
        else:
            self._scheduler.step()
        self._apply_clamps()

    @property
    def _clamped(self) -> bool:
        return self._min_lr is not None or self._max_lr is not None

    def _apply_clamps(self) -> None:
        if not self._clamped:
            return
        for group in self._optimizer.param_groups:
            group["lr"] = _clamp(group["lr"], self._min_lr, self._max_lr)


def _clamp(value: float, low: float | None, high: float | None) -> float:
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value


def _clamp_keys_of(type_: str) -> tuple[str, ...]:
    """The clamp keys of a type: a torch class's own argument wins over a clamp."""
    if type_ in _SHORTHAND_KWARGS or type_ == SEQUENTIAL_TYPE:
        return _CLAMP_KEYS
    cls = getattr(torch_lr, type_, None)
    if not inspect.isclass(cls):
        return _CLAMP_KEYS
    own = inspect.signature(cls).parameters
    return tuple(key for key in _CLAMP_KEYS if key not in own)


def _allowed_types_text() -> str:
    return (
        f"a shorthand {list(SHORTHAND_TYPES)}, {SEQUENTIAL_TYPE!r}, or the name of "
        "any class in torch.optim.lr_scheduler (e.g. 'CosineAnnealingLR', 'StepLR')"
    )


def _validate_schedule(
    type_: str, kwargs: Mapping[str, Any], *, path: str, top_level: bool
) -> None:
    """Check a ``{type, kwargs}`` block; ``path`` names it in messages."""
    kwargs_path = f"{path}.kwargs"
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{kwargs_path} must be a mapping, got {kwargs!r}")
    clamp_keys = [key for key in _clamp_keys_of(type_) if key in kwargs]
    if clamp_keys and not top_level:
        raise ValueError(
            f"{kwargs_path}: {clamp_keys} are only allowed on the top-level "
            f"schedule; put them in {_PATH}.kwargs"
        )
    for key in clamp_keys:
        _number(kwargs[key], path=f"{kwargs_path}.{key}", minimum=0.0)
    if len(clamp_keys) == 2 and kwargs["min_lr"] > kwargs["max_lr"]:
        raise ValueError(
            f"{kwargs_path}: min_lr ({kwargs['min_lr']}) must not exceed "
            f"max_lr ({kwargs['max_lr']})"
        )
    rest = {k: v for k, v in kwargs.items() if k not in clamp_keys}
    if type_ in _SHORTHAND_KWARGS:
        _validate_shorthand(type_, rest, path=kwargs_path)
    elif type_ == SEQUENTIAL_TYPE:
        if not top_level:
            raise ValueError(f"{path}.type: sequential schedules cannot be nested")
        _validate_sequential(rest, path=kwargs_path)
    else:
        _validate_torch_kwargs(_torch_class(type_, path=path), rest, path=kwargs_path)


def _check_keys(
    kwargs: Mapping[str, Any],
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    path: str,
    what: str,
) -> None:
    allowed = sorted([*required, *optional])
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {unknown} for {what}; allowed: {allowed}"
        )
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ValueError(
            f"{path}: missing required key(s) {missing} for {what}; allowed: {allowed}"
        )


def _number(
    value: Any,
    *,
    path: str,
    minimum: float | None = None,
    exclusive: bool = False,
    integer: bool = False,
) -> float:
    kind = "an integer" if integer else "a number"
    ok_types: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        hint = (
            " (YAML reads 1e-5 as text; write 1.0e-5)" if isinstance(value, str) else ""
        )
        raise ValueError(f"{path} must be {kind}, got {value!r}{hint}")
    number = float(cast(float, value))
    if not math.isfinite(number):
        raise ValueError(f"{path} must be finite, got {value!r}")
    if minimum is not None:
        if exclusive and number <= minimum:
            raise ValueError(f"{path} must be > {minimum}, got {value!r}")
        if not exclusive and number < minimum:
            raise ValueError(f"{path} must be >= {minimum}, got {value!r}")
    return number


def _validate_shorthand(type_: str, kwargs: Mapping[str, Any], *, path: str) -> None:
    required, optional = _SHORTHAND_KWARGS[type_]
    _check_keys(
        kwargs,
        required=required,
        optional=(*optional, *_CLAMP_KEYS),
        path=path,
        what=f"type {type_!r}",
    )
    for key in ("lr_start", "lr_end"):
        if key in kwargs:
            _number(kwargs[key], path=f"{path}.{key}", minimum=0.0)
    if type_ == "exponential":
        _number(
            kwargs["decay_rate"], path=f"{path}.decay_rate", minimum=0.0, exclusive=True
        )
        _number(
            kwargs["decay_steps"],
            path=f"{path}.decay_steps",
            minimum=0.0,
            exclusive=True,
        )
    elif type_ == "cosine":
        _number(
            kwargs["total_steps"], path=f"{path}.total_steps", minimum=1, integer=True
        )
    elif type_ == "warmup_cosine":
        warmup = _number(
            kwargs["warmup_steps"], path=f"{path}.warmup_steps", minimum=0, integer=True
        )
        total = _number(
            kwargs["total_steps"], path=f"{path}.total_steps", minimum=1, integer=True
        )
        if total <= warmup:
            raise ValueError(
                f"{path}.total_steps ({int(total)}) must exceed warmup_steps "
                f"({int(warmup)}); total_steps counts the warm-up too"
            )
    elif type_ == "piecewise_constant":
        _validate_piecewise(kwargs["boundaries"], kwargs["values"], path=path)


def _validate_piecewise(boundaries: Any, values: Any, *, path: str) -> None:
    if not isinstance(boundaries, list) or not isinstance(values, list):
        raise ValueError(f"{path}.boundaries and {path}.values must be lists")
    for i, boundary in enumerate(boundaries):
        _number(boundary, path=f"{path}.boundaries[{i}]", minimum=1, integer=True)
    if any(b >= c for b, c in zip(boundaries[:-1], boundaries[1:], strict=True)):
        raise ValueError(
            f"{path}.boundaries must be strictly increasing, got {boundaries}"
        )
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"{path}.values needs len(boundaries) + 1 = {len(boundaries) + 1} "
            f"entries, got {len(values)}"
        )
    for i, value in enumerate(values):
        _number(value, path=f"{path}.values[{i}]", minimum=0.0)


def _validate_sequential(kwargs: Mapping[str, Any], *, path: str) -> None:
    _check_keys(
        kwargs,
        required=("schedulers", "milestones"),
        optional=_CLAMP_KEYS,
        path=path,
        what="type 'sequential'",
    )
    schedulers, milestones = kwargs["schedulers"], kwargs["milestones"]
    if not isinstance(schedulers, list) or not schedulers:
        raise ValueError(
            f"{path}.schedulers must be a non-empty list of {{type, kwargs}} blocks"
        )
    if not isinstance(milestones, list) or len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"{path}.milestones must be a list of len(schedulers) - 1 = "
            f"{len(schedulers) - 1} step counts, got {milestones!r}"
        )
    for i, milestone in enumerate(milestones):
        _number(milestone, path=f"{path}.milestones[{i}]", minimum=1, integer=True)
    if any(a >= b for a, b in zip(milestones[:-1], milestones[1:], strict=True)):
        raise ValueError(f"{path}.milestones must be strictly increasing")
    for i, child in enumerate(schedulers):
        child_path = f"{path}.schedulers[{i}]"
        if not isinstance(child, Mapping):
            raise ValueError(f"{child_path} must be a {{type, kwargs}} mapping")
        _check_keys(
            child,
            required=("type",),
            optional=("kwargs",),
            path=child_path,
            what="a sequential member",
        )
        if not isinstance(child["type"], str):
            raise ValueError(
                f"{child_path}.type must be one of {_allowed_types_text()}"
            )
        _validate_schedule(
            child["type"], child.get("kwargs", {}), path=child_path, top_level=False
        )


def _torch_class(type_: str, *, path: str) -> type[torch_lr.LRScheduler]:
    if type_ in _UNSUPPORTED_TORCH:
        raise ValueError(
            f"{path}.type {type_!r} is not supported: {_UNSUPPORTED_TORCH[type_]}"
        )
    cls = getattr(torch_lr, type_, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch_lr.LRScheduler)):
        raise ValueError(
            f"{path}.type {type_!r} is unknown; allowed: {_allowed_types_text()}"
        )
    return cls


def _validate_torch_kwargs(
    cls: type[torch_lr.LRScheduler], kwargs: Mapping[str, Any], *, path: str
) -> None:
    params = list(inspect.signature(cls).parameters.values())[1:]  # drop optimizer
    names = [p.name for p in params]
    required = tuple(p.name for p in params if p.default is inspect.Parameter.empty)
    optional = tuple(name for name in names if name not in required)
    _check_keys(
        kwargs,
        required=required,
        optional=(*optional, *_clamp_keys_of(cls.__name__)),
        path=path,
        what=f"torch.optim.lr_scheduler.{cls.__name__}",
    )


def _build_scheduler(
    type_: str,
    kwargs: Mapping[str, Any],
    *,
    optimizer: torch.optim.Optimizer,
    lr0: float,
    path: str,
) -> torch_lr.LRScheduler:
    """The torch scheduler of a validated ``{type, kwargs}`` (clamps removed)."""
    if type_ in _SHORTHAND_KWARGS:
        if lr0 <= 0:
            raise ValueError(f"optimization.lr must be positive, got {lr0}")
        required, optional = _SHORTHAND_KWARGS[type_]
        lr_of_t = _shorthand_lr(type_, {**optional, **kwargs}, lr0=lr0)
        return torch_lr.LambdaLR(optimizer, lambda t: lr_of_t(t) / lr0)
    if type_ == SEQUENTIAL_TYPE:
        children = [
            _build_scheduler(
                child["type"],
                child.get("kwargs", {}),
                optimizer=optimizer,
                lr0=lr0,
                path=f"{path}.kwargs.schedulers[{i}]",
            )
            for i, child in enumerate(kwargs["schedulers"])
        ]
        return torch_lr.SequentialLR(
            optimizer, schedulers=children, milestones=list(kwargs["milestones"])
        )
    cls = _torch_class(type_, path=path)
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}.kwargs {dict(kwargs)} are not accepted by "
            f"torch.optim.lr_scheduler.{type_}: {err}"
        ) from None


def _shorthand_lr(
    type_: str, kwargs: Mapping[str, Any], *, lr0: float
) -> Callable[[int], float]:
    """``lr(t)`` of a shorthand (see the module docstring), before clamps."""
    if type_ == "constant":
        return lambda t: lr0
    if type_ == "exponential":
        rate, steps = float(kwargs["decay_rate"]), float(kwargs["decay_steps"])
        lr_end = float(kwargs["lr_end"])
        return lambda t: max(lr_end, lr0 * rate ** (t / steps))
    if type_ == "cosine":
        total, lr_end = int(kwargs["total_steps"]), float(kwargs["lr_end"])
        return lambda t: _cosine(min(t, total) / total, lr0, lr_end)
    if type_ == "warmup_cosine":
        warmup, total = int(kwargs["warmup_steps"]), int(kwargs["total_steps"])
        lr_start, lr_end = float(kwargs["lr_start"]), float(kwargs["lr_end"])

        def warmup_cosine(t: int) -> float:
            if t < warmup:
                return lr_start + (lr0 - lr_start) * t / warmup
            decay = total - warmup
            return _cosine(min(t - warmup, decay) / decay, lr0, lr_end)

        return warmup_cosine
    if type_ == "piecewise_constant":
        boundaries = [int(b) for b in kwargs["boundaries"]]
        values = [float(v) for v in kwargs["values"]]
        return lambda t: values[bisect.bisect_right(boundaries, t)]
    raise AssertionError(f"unhandled shorthand {type_}")


def _cosine(fraction: float, start: float, end: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0
