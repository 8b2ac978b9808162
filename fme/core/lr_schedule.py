"""Learning-rate schedules: ACE's ``optimization.scheduler`` block.

``{type, kwargs, step_each_iteration}`` as in ACE, where ``type`` is the name
of any ``torch.optim.lr_scheduler`` class and ``kwargs`` its arguments. Also:
the curves of ``fme.core.schedule`` (``constant``, ``linear``,
``exponential``, ``cosine``, ``warmup_cosine``, ``piecewise_constant``),
driving a ``LambdaLR``, with ``lr0 = optimization.lr`` as their start and
these ``kwargs``: ``linear`` and ``cosine``: ``total_steps``, ``lr_end=0``;
``exponential``: ``decay_rate``, ``decay_steps``, ``lr_end=0`` (a floor);
``warmup_cosine``: ``warmup_steps``, ``total_steps``, ``lr_start=0``,
``lr_end=0`` (peak ``lr0``); ``piecewise_constant``: ``boundaries``,
``values`` (absolute rates); ``constant``: none. ``sequential`` takes
``schedulers`` (``{type, kwargs}`` blocks) and ``milestones``, as
``torch.optim.lr_scheduler.SequentialLR``.

The clock (``step_each``, or ACE's ``step_each_iteration``): a torch class
steps once per epoch unless told otherwise (ACE's default
``step_each_iteration: false``); the curves and ``sequential`` step once per
optimiser step (never per micro-step of an accumulated rollout). On the
optimiser clock ``t`` is read from ``fme.core.schedule.OptimizerClock``.

Every type takes ``min_lr`` / ``max_lr`` clamps in its top-level ``kwargs``:
``lr = min(max_lr, max(min_lr, lr(t)))`` on what the optimiser sees, while
the schedule keeps evolving unclamped. Where a torch class has its own
``min_lr`` or ``max_lr`` argument, the key goes to the class. With several
parameter groups, a curve scales each group's initial rate by ``lr(t) / lr0``.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_lr

from fme.core.number_check import check_number
from fme.core.schedule import (
    Exponential,
    OptimizerClock,
    Schedule,
    Sequential,
    Spelling,
    check_keys,
    check_sequential_lists,
    parse_schedule,
)

SHORTHAND_TYPES = (
    "constant",
    "linear",
    "exponential",
    "cosine",
    "warmup_cosine",
    "piecewise_constant",
)
SEQUENTIAL_TYPE = "sequential"
STEP_EACH_OPTIONS = ("optimizer_step", "epoch")
_CLAMP_KEYS = ("min_lr", "max_lr")
_PATH = "optimization.scheduler"


def _exponential(
    *, start: float, decay_rate: float, decay_steps: float, end: float
) -> Schedule:
    if decay_rate <= 1:  # lr_end is where the decay stops
        return Exponential(start, decay_rate, decay_steps, end)
    growth = Exponential(start, decay_rate, decay_steps)
    return lambda t: max(end, growth(t))  # a floor below a growing rate


_SPELLING = Spelling(
    keys={
        "constant": ((), {}),
        "linear": (("total_steps",), {"lr_end": 0.0}),
        "exponential": (("decay_rate", "decay_steps"), {"lr_end": 0.0}),
        "cosine": (("total_steps",), {"lr_end": 0.0}),
        "warmup_cosine": (
            ("warmup_steps", "total_steps"),
            {"lr_start": 0.0, "lr_end": 0.0},
        ),
        "piecewise_constant": (("boundaries", "values"), {}),
    },
    to_canonical={"lr_start": "start", "lr_end": "end", "total_steps": "n_steps"},
    from_base={
        "constant": "value",
        "linear": "start",
        "exponential": "start",
        "cosine": "start",
        "warmup_cosine": "peak",
    },
    extra_keys=_CLAMP_KEYS,
    curves={"exponential": _exponential},
)
# torch.optim.lr_scheduler classes that cannot be configured from YAML.
_UNSUPPORTED_TORCH = {
    "LRScheduler": "it is the abstract base class",
    "_LRScheduler": "it is the abstract base class",
    "LambdaLR": "it needs a Python callable; use a shorthand instead",
    "MultiplicativeLR": "it needs a Python callable; use a shorthand instead",
    "SequentialLR": "it needs scheduler objects; use type: sequential instead",
    "ChainedScheduler": "it needs scheduler objects; use type: sequential instead",
}


@dataclasses.dataclass
class SchedulerConfig:
    """ACE's ``optimization.scheduler`` block (see the module docstring).

    Attributes:
        type: ``None`` (constant ``optimization.lr``), a curve, ``sequential``
            or the name of a ``torch.optim.lr_scheduler`` class.
        kwargs: the schedule's arguments, plus ``min_lr`` / ``max_lr``.
        step_each: ``optimizer_step`` or ``epoch``; default ``epoch`` for a
            torch class (as in ACE), ``optimizer_step`` otherwise.
        step_each_iteration: ACE's spelling: ``true`` is ``optimizer_step``,
            ``false`` is ``epoch``. Give at most one of the two.
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
        self._build_parts(None, lr0=1.0)  # checks every key now, before training
        if self.type == "ReduceLROnPlateau" and self.resolved_step_each != "epoch":
            raise ValueError(
                f"{_PATH}.type {self.type} steps on the validation loss, so it needs "
                f"{_PATH}.step_each: epoch"
            )

    @property
    def resolved_step_each(self) -> str:
        """``step_each`` after ACE's ``step_each_iteration`` and the defaults."""
        if self.step_each is not None:
            return self.step_each
        if self.step_each_iteration is not None:
            return "optimizer_step" if self.step_each_iteration else "epoch"
        if self.type in (None, SEQUENTIAL_TYPE, *SHORTHAND_TYPES):
            return "optimizer_step"
        return "epoch"

    def build(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr0: float,
        clock: OptimizerClock,
    ) -> "LRSchedule":
        """The schedule of ``optimizer``'s learning rate, starting now on ``clock``.

        Raises:
            ValueError: if a torch class rejects its kwargs, naming
                ``optimization.scheduler.kwargs``.
        """
        per_epoch = self.resolved_step_each == "epoch"
        schedule = LRSchedule(optimizer=optimizer, clock=clock, per_epoch=per_epoch)
        if self.type is not None:
            curve, clamps = self._build_parts(optimizer, lr0=lr0)
            if callable(curve) and not isinstance(curve, torch_lr.LRScheduler):
                position = schedule.position_reader if not per_epoch else None
                curve = _lambda_lr(optimizer, curve, lr0=lr0, position=position)
            schedule.attach(curve, **clamps)
        return schedule

    def _build_parts(
        self, optimizer: torch.optim.Optimizer | None, *, lr0: float
    ) -> tuple[Any, dict[str, float | None]]:
        """(curve or torch scheduler, clamps); only checks when no optimiser."""
        assert self.type is not None
        kwargs = dict(self.kwargs)
        clamp_keys = _clamp_keys_of(self.type)
        clamps = {key: kwargs.pop(key, None) for key in clamp_keys}
        for key, value in clamps.items():
            if value is not None:
                check_number(value, path=f"{_PATH}.kwargs.{key}", minimum=0.0)
        if None not in clamps.values() and len(clamps) == 2:
            if clamps["min_lr"] > clamps["max_lr"]:  # type: ignore[operator]
                raise ValueError(
                    f"{_PATH}.kwargs: min_lr ({clamps['min_lr']}) must not exceed "
                    f"max_lr ({clamps['max_lr']})"
                )
        part = _build_member(
            self.type, kwargs, path=_PATH, optimizer=optimizer, lr0=lr0, top=True
        )
        return part, clamps


def _build_member(
    type_: str,
    kwargs: Mapping[str, Any],
    *,
    path: str,
    optimizer: torch.optim.Optimizer | None,
    lr0: float,
    top: bool,
) -> Any:
    """A curve or (with an optimiser) a torch scheduler of one block."""
    kwargs_path = f"{path}.kwargs"
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{kwargs_path} must be a mapping, got {kwargs!r}")
    if not top and any(key in kwargs for key in _clamp_keys_of(type_)):
        raise ValueError(
            f"{kwargs_path}: min_lr and max_lr are only allowed on the top-level "
            f"schedule; put them in {_PATH}.kwargs"
        )
    if type_ in SHORTHAND_TYPES:
        return parse_schedule(
            type_, kwargs, path=kwargs_path, spelling=_SPELLING, base=lr0
        )
    if type_ == SEQUENTIAL_TYPE:
        if not top:
            raise ValueError(f"{path}.type: sequential schedules cannot be nested")
        return _build_sequential(kwargs, path=kwargs_path, optimizer=optimizer, lr0=lr0)
    cls = _torch_class(type_, path=path)
    params = list(inspect.signature(cls).parameters.values())[1:]  # no optimizer
    check_keys(
        kwargs,
        required=[p.name for p in params if p.default is inspect.Parameter.empty],
        optional=[p.name for p in params],
        path=kwargs_path,
        what=f"torch.optim.lr_scheduler.{cls.__name__}",
    )
    if optimizer is None:
        return None
    try:
        return cls(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{kwargs_path} {dict(kwargs)} are not accepted by "
            f"torch.optim.lr_scheduler.{type_}: {err}"
        ) from None


def _build_sequential(
    kwargs: Mapping[str, Any],
    *,
    path: str,
    optimizer: torch.optim.Optimizer | None,
    lr0: float,
) -> Any:
    """One curve if every member is a curve, else a torch ``SequentialLR``."""
    check_keys(
        kwargs,
        required=("schedulers", "milestones"),
        optional=(),
        path=path,
        what="type 'sequential'",
    )
    schedulers, milestones = kwargs["schedulers"], kwargs["milestones"]
    check_sequential_lists(schedulers, milestones, path=path)
    members = []
    for i, child in enumerate(schedulers):
        child_path = f"{path}.schedulers[{i}]"
        if not isinstance(child, Mapping):
            raise ValueError(f"{child_path} must be a {{type, kwargs}} mapping")
        check_keys(
            child,
            required=("type",),
            optional=("kwargs",),
            path=child_path,
            what="a sequential member",
        )
        members.append(
            _build_member(
                child["type"],
                child.get("kwargs", {}),
                path=child_path,
                optimizer=optimizer,
                lr0=lr0,
                top=False,
            )
        )
    if optimizer is None:
        return None
    if all(not isinstance(m, torch_lr.LRScheduler) for m in members):
        return Sequential(tuple(members), tuple(milestones))
    schedulers = [
        m if isinstance(m, torch_lr.LRScheduler) else _lambda_lr(optimizer, m, lr0=lr0)
        for m in members
    ]
    return torch_lr.SequentialLR(
        optimizer, schedulers=schedulers, milestones=list(milestones)
    )


def _lambda_lr(
    optimizer: torch.optim.Optimizer,
    curve: Schedule,
    *,
    lr0: float,
    position: Callable[[], int] | None = None,
) -> torch_lr.LambdaLR:
    """A curve driving the rate: of ``position()`` if given, else of torch's count."""
    if position is None:
        return torch_lr.LambdaLR(optimizer, lambda epoch: curve(epoch) / lr0)
    return torch_lr.LambdaLR(optimizer, lambda _: curve(position()) / lr0)


class LRSchedule:
    """A learning-rate scheduler on a clock, with optional clamps.

    ``t`` is the number of steps the schedule has taken: optimiser steps since
    it was built (read from the clock), or epochs (torch's count). The
    optimiser's rate is then ``lr(t)``, the rate of step ``t + 1``.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        clock: the optimiser clock; the schedule starts at its current value.
        per_epoch: the schedule steps at epoch ends, not optimiser steps.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        clock: OptimizerClock,
        per_epoch: bool,
    ):
        self._optimizer = optimizer
        self._clock = clock
        self._origin = clock.step
        self._per_epoch = per_epoch
        self._scheduler: Any = None
        self._clamps: tuple[float | None, float | None] = (None, None)

    def position_reader(self) -> int:
        """Optimiser steps since the schedule started (its ``t`` on that clock)."""
        return self._clock.step - self._origin

    def attach(
        self,
        scheduler: Any,
        *,
        min_lr: float | None = None,
        max_lr: float | None = None,
    ) -> None:
        """Drive the rate by ``scheduler`` (a torch scheduler), clamped."""
        self._scheduler = scheduler
        self._clamps = (min_lr, max_lr)
        self._apply_clamps()

    @property
    def step_each(self) -> str:
        """The schedule's clock: ``optimizer_step`` or ``epoch``."""
        return "epoch" if self._per_epoch else "optimizer_step"

    @property
    def t(self) -> int:
        """Steps the schedule has taken on its clock."""
        if self._per_epoch and self._scheduler is not None:
            return int(self._scheduler.last_epoch)
        return self.position_reader()

    @property
    def needs_metric(self) -> bool:
        """Whether ``step_epoch`` needs the validation loss (ReduceLROnPlateau)."""
        return isinstance(self._scheduler, torch_lr.ReduceLROnPlateau)

    @property
    def current_lr(self) -> float:
        """The learning rate of the first parameter group, used by the next step."""
        return float(self._optimizer.param_groups[0]["lr"])

    def step_optimizer(self) -> None:
        """Call after each optimiser step (the clock ticked); advances per step."""
        if not self._per_epoch:
            self._advance(None)

    def step_epoch(self, metric: float | None = None) -> None:
        """Call at the end of each epoch; advances a per-epoch schedule.

        Args:
            metric: the validation loss, required when ``needs_metric``.
        """
        if self._per_epoch:
            if self.needs_metric and metric is None:
                raise ValueError(
                    "ReduceLROnPlateau needs the validation loss: call "
                    "step_epoch(metric=<validation loss>)"
                )
            self._advance(metric)

    def state_dict(self) -> dict[str, Any]:
        """``t`` (the schedule's position) and the torch scheduler's state."""
        scheduler = self._scheduler
        return {
            "t": self.t,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (after the clock) and set the rates.

        A state without a scheduler (saved with ``type: None``) leaves a
        configured scheduler at its start.
        """
        if not self._per_epoch:
            self._origin = self._clock.step - int(state.get("t", 0))
        scheduler_state = state.get("scheduler")
        if self._scheduler is not None and scheduler_state is not None:
            self._scheduler.load_state_dict(scheduler_state)
            self._set_rates(self._scheduler.get_last_lr())
            self._apply_clamps()

    def _set_rates(self, rates: list[float]) -> None:
        for group, lr in zip(self._optimizer.param_groups, rates, strict=True):
            group["lr"] = lr

    def _advance(self, metric: float | None) -> None:
        if self._scheduler is None:
            return
        if self._clamps != (None, None):  # continue from the unclamped values
            self._set_rates(self._scheduler.get_last_lr())
        if isinstance(self._scheduler, torch_lr.ReduceLROnPlateau):
            assert metric is not None
            self._scheduler.step(metric)
        else:
            self._scheduler.step()
        self._apply_clamps()

    def _apply_clamps(self) -> None:
        low, high = self._clamps
        for group in self._optimizer.param_groups:
            if low is not None:
                group["lr"] = max(low, group["lr"])
            if high is not None:
                group["lr"] = min(high, group["lr"])


def _clamp_keys_of(type_: str) -> tuple[str, ...]:
    """The clamp keys of a type: a torch class's own argument wins over a clamp."""
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    if type_ in (*SHORTHAND_TYPES, SEQUENTIAL_TYPE) or not inspect.isclass(cls):
        return _CLAMP_KEYS
    own = inspect.signature(cls).parameters
    return tuple(key for key in _CLAMP_KEYS if key not in own)


def _allowed_types_text() -> str:
    return (
        f"a shorthand {list(SHORTHAND_TYPES)}, {SEQUENTIAL_TYPE!r}, or the name of "
        "any class in torch.optim.lr_scheduler (e.g. 'CosineAnnealingLR', 'StepLR')"
    )


def _torch_class(type_: str, *, path: str) -> type[torch_lr.LRScheduler]:
    if type_ in _UNSUPPORTED_TORCH:
        raise ValueError(
            f"{path}.type {type_!r} is not supported: {_UNSUPPORTED_TORCH[type_]}"
        )
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    if not (inspect.isclass(cls) and issubclass(cls, torch_lr.LRScheduler)):
        raise ValueError(
            f"{path}.type {type_!r} is unknown; allowed: {_allowed_types_text()}"
        )
    return cls
