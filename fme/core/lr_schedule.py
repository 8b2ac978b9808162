"""Learning-rate schedules: ACE's ``optimization.scheduler`` block.

``{type, kwargs, step_each_iteration}``: ``type`` is any
``torch.optim.lr_scheduler`` class (``kwargs`` its arguments, checked at load),
a curve of ``fme.core.schedule`` driving a ``LambdaLR`` from
``lr0 = optimization.lr`` (``linear``, ``cosine``: ``total_steps``,
``lr_end=0``; ``exponential``: ``decay_rate``, ``decay_steps``, ``lr_end=0``,
a floor; ``warmup_cosine``: ``warmup_steps``, ``total_steps``,
``lr_start=0``, ``lr_end=0``, peak ``lr0``; ``piecewise_constant``:
``boundaries``, absolute ``values``; ``constant``), or ``sequential``
(``schedulers``: ``{type, kwargs}`` blocks, ``milestones``, as
``SequentialLR``). Every type takes ``min_lr`` / ``max_lr`` clamps of the rate
the optimiser sees (the schedule evolves unclamped; a torch class's own
``min_lr`` / ``max_lr`` argument goes to the class). With several parameter
groups a curve scales each group's initial rate by ``lr(t) / lr0``.

A torch class steps once per epoch unless ``step_each_iteration: true`` (ACE's
default, ``false``); curves and ``sequential`` step once per optimiser step
(never per micro-step), reading ``t`` from the optimiser clock.
``step_each: optimizer_step | epoch`` sets either explicitly.
"""

import dataclasses
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import lr_scheduler as torch_lr

from fme.core.number_check import check_number
from fme.core.schedule import (
    CURVES,
    Schedule,
    Spelling,
    check_sequential,
    exponential,
    parse_schedule,
    sequential,
)

if TYPE_CHECKING:
    from fme.core.optimization import OptimizerClock

SHORTHAND_TYPES = (
    "constant",
    "linear",
    "exponential",
    "cosine",
    "warmup_cosine",
    "piecewise_constant",
)
STEP_EACH_OPTIONS = ("optimizer_step", "epoch")
_CLAMPS = ("min_lr", "max_lr")
_PATH = "optimization.scheduler"
_NOT_FROM_YAML = {  # torch classes that cannot be configured from YAML
    "LRScheduler": "it is the abstract base class",
    "_LRScheduler": "it is the abstract base class",
    "LambdaLR": "it needs a Python callable; use a shorthand instead",
    "MultiplicativeLR": "it needs a Python callable; use a shorthand instead",
    "SequentialLR": "it needs scheduler objects; use type: sequential instead",
    "ChainedScheduler": "it needs scheduler objects; use type: sequential instead",
}


def _exponential(*, start: float, decay_rate: float, decay_steps: float, end: float):
    if decay_rate <= 1:  # lr_end is where the decay stops
        return exponential(start, decay_rate, decay_steps, end)
    growth = exponential(start, decay_rate, decay_steps)
    return lambda t: max(end, growth(t))  # a floor below a growing rate


_SPELLING = Spelling(
    keys={
        "constant": ((), {}),
        "linear": (("total_steps",), {"lr_end": 0.0}),
        "exponential": (("decay_rate", "decay_steps"), {"lr_end": 0.0}),
        "cosine": (("total_steps",), {"lr_end": 0.0}),
        "warmup_cosine": (
            ("warmup_steps", "total_steps"),
            {"lr_start": 0, "lr_end": 0},
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
    extra_keys=_CLAMPS,
    curves={**CURVES, "exponential": _exponential},
)


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

    @classmethod
    def migrate_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Refuse ACE's untyped sequential block with the fix."""
        if "schedulers" in data and "type" not in data:
            raise ValueError(
                f"not supported here: ACE's {_PATH} block {{schedulers, milestones}}; "
                "write {type: sequential, kwargs: {schedulers: [...], milestones: "
                "[...]}} (members {type, kwargs}; step_each_iteration on the block)"
            )
        return data

    def __post_init__(self):
        if self.step_each not in (None, *STEP_EACH_OPTIONS):
            raise ValueError(
                f"{_PATH}.step_each {self.step_each!r} is unknown; "
                f"allowed: {list(STEP_EACH_OPTIONS)}"
            )
        if self.step_each is not None and self.step_each_iteration is not None:
            raise ValueError(
                f"{_PATH}: give step_each or ACE's step_each_iteration, not both"
            )
        if self.type is None and self.kwargs:
            raise ValueError(
                f"{_PATH}.kwargs {sorted(self.kwargs)} given without a type; set "
                f"{_PATH}.type to one of {_allowed_types()}"
            )
        if self.type == "ReduceLROnPlateau" and self.resolved_step_each != "epoch":
            raise ValueError(
                f"{_PATH}.type {self.type} steps on the validation loss, so it needs "
                f"{_PATH}.step_each: epoch"
            )
        if self.type is not None:
            self._parts(None, lr0=1.0)  # every key checked at load

    @property
    def resolved_step_each(self) -> str:
        """``step_each`` after ACE's ``step_each_iteration`` and the defaults."""
        if self.step_each is not None:
            return self.step_each
        if self.step_each_iteration is not None:
            return "optimizer_step" if self.step_each_iteration else "epoch"
        ours = (None, "sequential", *SHORTHAND_TYPES)
        return "optimizer_step" if self.type in ours else "epoch"

    def build(
        self, optimizer: torch.optim.Optimizer, *, lr0: float, clock: "OptimizerClock"
    ) -> "LRSchedule":
        """The schedule of ``optimizer``'s rate, starting now on ``clock``.

        Raises:
            ValueError: if a torch class rejects its kwargs, naming
                ``optimization.scheduler.kwargs``.
        """
        per_epoch = self.resolved_step_each == "epoch"
        schedule = LRSchedule(optimizer=optimizer, clock=clock, per_epoch=per_epoch)
        if self.type is not None:
            part, clamps = self._parts(optimizer, lr0=lr0)
            if not isinstance(part, torch_lr.LRScheduler):  # a curve
                position = None if per_epoch else schedule.position
                part = _lambda_lr(optimizer, part, lr0=lr0, position=position)
            schedule.attach(part, clamps)
        return schedule

    def _parts(
        self, optimizer: torch.optim.Optimizer | None, *, lr0: float
    ) -> tuple[Any, tuple[float | None, float | None]]:
        """(curve or torch scheduler, clamps); only checks without an optimiser."""
        assert self.type is not None
        kwargs = dict(self.kwargs)
        clamps = {k: kwargs.pop(k) for k in _clamp_keys(self.type) if k in kwargs}
        for key, value in clamps.items():
            check_number(value, path=f"{_PATH}.kwargs.{key}", minimum=0.0)
        low, high = clamps.get("min_lr"), clamps.get("max_lr")
        if low is not None and high is not None and low > high:
            raise ValueError(
                f"{_PATH}.kwargs: min_lr ({low}) must not exceed max_lr ({high})"
            )
        if self.type != "sequential":
            part = _member(self.type, kwargs, _PATH, optimizer, lr0)
            return part, (low, high)
        members = [
            _member(
                type_, member_kwargs, f"{_PATH}.kwargs.schedulers[{i}]", optimizer, lr0
            )
            for i, (type_, member_kwargs) in enumerate(
                check_sequential(kwargs, path=f"{_PATH}.kwargs")
            )
        ]
        if optimizer is None:
            return None, (low, high)
        milestones = list(kwargs["milestones"])
        if not any(isinstance(m, torch_lr.LRScheduler) for m in members):
            return sequential(members, milestones), (low, high)
        schedulers = [
            m
            if isinstance(m, torch_lr.LRScheduler)
            else _lambda_lr(optimizer, m, lr0=lr0)
            for m in members
        ]
        return torch_lr.SequentialLR(optimizer, schedulers, milestones), (low, high)


def _member(
    type_: Any,
    kwargs: Any,
    path: str,
    optimizer: torch.optim.Optimizer | None,
    lr0: float,
) -> Any:
    """The curve or (given an optimiser) torch scheduler of one block."""
    kwargs_path = f"{path}.kwargs"
    if path != _PATH and isinstance(kwargs, Mapping):
        if any(key in kwargs for key in _clamp_keys(type_)):
            raise ValueError(
                f"{kwargs_path}: min_lr and max_lr are only allowed on the "
                f"top-level schedule; put them in {_PATH}.kwargs"
            )
    if type_ in SHORTHAND_TYPES:
        return parse_schedule(
            type_, kwargs, path=kwargs_path, spelling=_SPELLING, base=lr0
        )
    if type_ == "sequential":
        raise ValueError(f"{path}.type: sequential schedules cannot be nested")
    cls = _torch_class(type_, path=path)
    try:
        inspect.signature(cls).bind(optimizer, **kwargs)
        return None if optimizer is None else cls(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        params = list(inspect.signature(cls).parameters)[1:]
        raise ValueError(
            f"{kwargs_path} {dict(kwargs)} are not accepted by "
            f"torch.optim.lr_scheduler.{type_} (arguments: {params}): {err}"
        ) from None


def _lambda_lr(optimizer, curve: Schedule, *, lr0: float, position=None):
    """A curve driving the rate: of ``position()`` if given, else torch's count."""
    if position is None:
        return torch_lr.LambdaLR(optimizer, lambda epoch: curve(epoch) / lr0)
    return torch_lr.LambdaLR(optimizer, lambda _: curve(position()) / lr0)


class LRSchedule:
    """A learning-rate scheduler on a clock, with optional clamps.

    ``t`` is the number of steps the schedule has taken: optimiser steps since
    it was built (read from the clock) or epochs (torch's count); the rate is
    then ``lr(t)``, the rate of step ``t + 1``.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        clock: the optimiser clock; the schedule starts at its current value.
        per_epoch: the schedule steps at epoch ends, not optimiser steps.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        clock: "OptimizerClock",
        per_epoch: bool,
    ):
        self._optimizer, self._clock = optimizer, clock
        self._origin, self._per_epoch = clock.step, per_epoch
        self._scheduler: Any = None
        self._clamps: tuple[float | None, float | None] = (None, None)

    def position(self) -> int:
        """Optimiser steps since the schedule started."""
        return self._clock.step - self._origin

    def attach(self, scheduler: Any, clamps: tuple[float | None, float | None]) -> None:
        """Drive the rate by the torch ``scheduler``, clamped to ``(min, max)``."""
        self._scheduler, self._clamps = scheduler, clamps
        self._clamp()

    @property
    def step_each(self) -> str:
        """The schedule's clock: ``optimizer_step`` or ``epoch``."""
        return "epoch" if self._per_epoch else "optimizer_step"

    @property
    def t(self) -> int:
        """Steps the schedule has taken on its clock."""
        if self._per_epoch and self._scheduler is not None:
            return int(self._scheduler.last_epoch)
        return self.position()

    @property
    def needs_metric(self) -> bool:
        """Whether ``step_epoch`` needs the validation loss (ReduceLROnPlateau)."""
        return isinstance(self._scheduler, torch_lr.ReduceLROnPlateau)

    @property
    def current_lr(self) -> float:
        """The learning rate of the first parameter group, used by the next step."""
        return float(self._optimizer.param_groups[0]["lr"])

    def step_optimizer(self) -> None:
        """Call after each optimiser step (the clock ticked)."""
        if not self._per_epoch:
            self._advance(None)

    def step_epoch(self, metric: float | None = None) -> None:
        """Call at the end of each epoch; ``metric`` (validation loss) if needed."""
        if self._per_epoch:
            if self.needs_metric and metric is None:
                raise ValueError(
                    "ReduceLROnPlateau needs the validation loss: call "
                    "step_epoch(metric=<validation loss>)"
                )
            self._advance(metric)

    def state_dict(self) -> dict[str, Any]:
        """``t`` (the position on the clock) and the torch scheduler's state."""
        scheduler = self._scheduler
        state = None if scheduler is None else scheduler.state_dict()
        return {"t": self.t, "scheduler": state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (after the clock) and set the rates."""
        if not self._per_epoch:
            self._origin = self._clock.step - int(state.get("t", 0))
        if self._scheduler is not None and state.get("scheduler") is not None:
            self._scheduler.load_state_dict(state["scheduler"])
            self._set_rates(self._scheduler.get_last_lr())
            self._clamp()

    def _set_rates(self, rates: list[float]) -> None:
        for group, lr in zip(self._optimizer.param_groups, rates, strict=True):
            group["lr"] = lr

    def _advance(self, metric: float | None) -> None:
        if self._scheduler is None:
            return
        if self._clamps != (None, None):  # continue from the unclamped rates
            self._set_rates(self._scheduler.get_last_lr())
        if metric is not None:
            self._scheduler.step(metric)
        else:
            self._scheduler.step()
        self._clamp()

    def _clamp(self) -> None:
        low, high = self._clamps
        for group in self._optimizer.param_groups:
            group["lr"] = max(low, group["lr"]) if low is not None else group["lr"]
            group["lr"] = min(high, group["lr"]) if high is not None else group["lr"]


def _clamp_keys(type_: Any) -> tuple[str, ...]:
    """The clamp keys of a type: a torch class's own argument wins over a clamp."""
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    if not inspect.isclass(cls):
        return _CLAMPS
    return tuple(k for k in _CLAMPS if k not in inspect.signature(cls).parameters)


def _allowed_types() -> str:
    return (
        f"a shorthand {list(SHORTHAND_TYPES)}, 'sequential', or the name of any "
        "class in torch.optim.lr_scheduler (e.g. 'CosineAnnealingLR', 'StepLR')"
    )


def _torch_class(type_: Any, *, path: str) -> type[torch_lr.LRScheduler]:
    if type_ in _NOT_FROM_YAML:
        raise ValueError(
            f"{path}.type {type_!r} is not supported: {_NOT_FROM_YAML[type_]}"
        )
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    if not (inspect.isclass(cls) and issubclass(cls, torch_lr.LRScheduler)):
        raise ValueError(
            f"{path}.type {type_!r} is unknown; allowed: {_allowed_types()}"
        )
    return cls
