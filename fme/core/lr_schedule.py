"""Learning-rate schedules: ACE's ``optimization.scheduler`` block.

``type`` is a ``torch.optim.lr_scheduler`` class (``kwargs`` its arguments,
checked at load), or a curve of ``fme.core.schedule`` from ``lr0 =
optimization.lr`` (keys in the README) driving a ``LambdaLR``, which scales
each parameter group's rate by ``lr(t) / lr0``. Every type takes ``min_lr`` /
``max_lr`` clamps of the rate the optimiser sees (the schedule evolves
unclamped; a torch class's own ``min_lr`` / ``max_lr`` goes to the class).
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import lr_scheduler as torch_lr

from fme.core import schedule as curves
from fme.core.schedule import Schedule

if TYPE_CHECKING:
    from fme.core.optimization import OptimizerClock


def _curves(lr0: float) -> dict[str, Callable[..., Schedule]]:
    """The curves as this block spells them, starting (or peaking) at ``lr0``."""
    return {
        "constant": lambda: curves.constant(lr0),
        "linear": lambda *, total_steps, lr_end=0.0: curves.linear(
            lr0, lr_end, total_steps
        ),
        "exponential": lambda *, decay_rate, decay_steps, lr_end=0.0: _floor(
            curves.exponential(lr0, decay_rate, decay_steps), lr_end
        ),
        "cosine": lambda *, total_steps, lr_end=0.0: curves.cosine(
            lr0, lr_end, total_steps
        ),
        "warmup_cosine": lambda *, warmup_steps, total_steps, lr_start=0, lr_end=0: (
            curves.warmup_cosine(
                start=lr_start,
                peak=lr0,
                end=lr_end,
                warmup_steps=warmup_steps,
                n_steps=total_steps,
            )
        ),
        "piecewise_constant": curves.piecewise_constant,
    }


def _floor(curve: Schedule, floor: float) -> Schedule:
    return lambda t: max(floor, curve(t))


SHORTHAND_TYPES = tuple(_curves(1.0))
STEP_EACH_OPTIONS = ("optimizer_step", "epoch")
_CLAMPS = ("min_lr", "max_lr")
_PATH = "optimization.scheduler"
_ALLOWED = (
    f"a shorthand {list(SHORTHAND_TYPES)}, 'sequential', or the name of any "
    "class in torch.optim.lr_scheduler (e.g. 'CosineAnnealingLR', 'StepLR')"
)
# torch classes that need Python objects (callables, schedulers) or are abstract
_NOT_FROM_YAML = (
    "LRScheduler _LRScheduler LambdaLR MultiplicativeLR SequentialLR ChainedScheduler"
).split()


@dataclasses.dataclass
class SchedulerConfig:
    """ACE's ``optimization.scheduler`` block (see the module docstring).

    Attributes:
        type: ``None`` (constant ``optimization.lr``), a curve, ``sequential``
            (``schedulers``: ``{type, kwargs}`` blocks, ``milestones``, as
            ``SequentialLR``) or a ``torch.optim.lr_scheduler`` class name.
        kwargs: the schedule's arguments, plus ``min_lr`` / ``max_lr``.
        step_each: ``optimizer_step`` or ``epoch``; default ``epoch`` for a
            torch class (as in ACE), ``optimizer_step`` otherwise. Curves
            then read ``t`` from the optimiser clock.
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
                f"{_PATH}.type to one of {_ALLOWED}"
            )
        if self.type == "ReduceLROnPlateau" and self.resolved_step_each != "epoch":
            raise ValueError(
                f"{_PATH}.type {self.type} steps on the validation loss, so it needs "
                f"{_PATH}.step_each: epoch"
            )
        if self.type is not None:
            self._scheduler(None, lr0=1.0)  # every key checked at load

    @property
    def resolved_step_each(self) -> str:
        """``step_each`` after ACE's ``step_each_iteration`` and the defaults."""
        if self.step_each is not None:
            return self.step_each
        if self.step_each_iteration is not None:
            return STEP_EACH_OPTIONS[0 if self.step_each_iteration else 1]
        ours = (None, "sequential", *SHORTHAND_TYPES)
        return STEP_EACH_OPTIONS[0 if self.type in ours else 1]

    def build(
        self, optimizer: torch.optim.Optimizer, *, lr0: float, clock: "OptimizerClock"
    ) -> "LRSchedule":
        """The schedule of ``optimizer``'s rate, starting now on ``clock``.

        Raises:
            ValueError: if a torch class rejects its kwargs, naming
                ``optimization.scheduler.kwargs``.
        """
        per_epoch = self.resolved_step_each == "epoch"
        low, high = (
            self.kwargs.get(k) if k in _clamp_keys(self.type) else None for k in _CLAMPS
        )
        schedule = LRSchedule(optimizer, clock=clock, per_epoch=per_epoch)
        if self.type is not None:
            t = None if per_epoch else lambda: schedule.t
            schedule.drive(self._scheduler(optimizer, lr0=lr0, t=t), (low, high))
        return schedule

    def _scheduler(
        self,
        optimizer: torch.optim.Optimizer | None,
        *,
        lr0: float,
        t: Callable[[], int] | None = None,
    ) -> Any:
        """The block's torch scheduler (a curve reads ``t()``, else torch's
        count); without an optimiser it only checks."""
        clamps = _clamp_keys(self.type)
        kwargs = dict(self.kwargs)
        curves.check_numbers(
            {k: kwargs.pop(k) for k in clamps if k in kwargs}, path=f"{_PATH}.kwargs"
        )
        part = _member(self.type, kwargs, _PATH, optimizer, lr0)
        if optimizer is None or isinstance(part, torch_lr.LRScheduler):
            return part
        return _lambda_lr(optimizer, part, lr0=lr0, t=t)


def _member(
    type_: Any,
    kwargs: Any,
    path: str,
    optimizer: torch.optim.Optimizer | None,
    lr0: float,
) -> Any:
    """The curve or (given an optimiser) torch scheduler of one block."""
    if isinstance(kwargs, Mapping) and set(kwargs) & set(_clamp_keys(type_)):
        raise ValueError(
            f"{path}.kwargs: min_lr and max_lr are only allowed on the top-level "
            f"schedule; put them in {_PATH}.kwargs"
        )
    if type_ in SHORTHAND_TYPES or (type_ == "sequential" and path == _PATH):
        return curves.parse_schedule(
            type_,
            kwargs,
            path=path,
            types={
                **_curves(lr0),
                "sequential": lambda *, schedulers, milestones: _sequential(
                    optimizer, schedulers, milestones, lr0=lr0
                ),
            },
            member=lambda type_, kwargs, path: _member(
                type_, kwargs, path, optimizer, lr0
            ),
            extra=_CLAMPS,
        )
    if type_ == "sequential":
        raise ValueError(f"{path}.type: sequential schedules cannot be nested")
    if type_ in _NOT_FROM_YAML:
        raise ValueError(
            f"{path}.type {type_!r} is not supported: it needs Python objects or is "
            "abstract; use a shorthand or type: sequential instead"
        )
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    if not (inspect.isclass(cls) and issubclass(cls, torch_lr.LRScheduler)):
        raise ValueError(f"{path}.type {type_!r} is unknown; allowed: {_ALLOWED}")
    try:
        inspect.signature(cls).bind(optimizer, **kwargs)
        return None if optimizer is None else cls(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        params = list(inspect.signature(cls).parameters)[1:]
        raise ValueError(
            f"{path}.kwargs {dict(kwargs)} are not accepted by "
            f"torch.optim.lr_scheduler.{type_} (arguments: {params}): {err}"
        ) from None


def _sequential(
    optimizer: torch.optim.Optimizer | None,
    members: list[Any],
    milestones: list[int],
    *,
    lr0: float,
) -> Any:
    """One curve of curve members, else torch's ``SequentialLR``."""
    if optimizer is None:
        return None
    if not any(isinstance(m, torch_lr.LRScheduler) for m in members):
        return curves.sequential(members, milestones)
    schedulers = [
        m if isinstance(m, torch_lr.LRScheduler) else _lambda_lr(optimizer, m, lr0=lr0)
        for m in members
    ]
    return torch_lr.SequentialLR(optimizer, schedulers, milestones)


def _lambda_lr(
    optimizer: torch.optim.Optimizer,
    curve: Schedule,
    *,
    lr0: float,
    t: Callable[[], int] | None = None,
) -> torch_lr.LambdaLR:
    """``curve`` driving the rates, of ``t()`` if given, else of torch's count."""
    return torch_lr.LambdaLR(optimizer, lambda e: curve(e if t is None else t()) / lr0)


def _clamp_keys(type_: Any) -> list[str]:
    """The clamp keys of a type: a torch class's own argument wins over a clamp."""
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    own = inspect.signature(cls).parameters if inspect.isclass(cls) else {}
    return [key for key in _CLAMPS if key not in own]


class LRSchedule:
    """A learning-rate scheduler on a clock, with optional clamps.

    ``t`` counts the steps the schedule has taken: optimiser steps since it
    was built (read from ``clock``) or epochs (torch's count); the rate is
    ``lr(t)``, the rate of step ``t + 1``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clock: "OptimizerClock",
        per_epoch: bool,
    ):
        self._optimizer, self._clock, self._origin = optimizer, clock, clock.step
        self._per_epoch = per_epoch
        self._scheduler: Any = None
        self._clamps: tuple[float | None, float | None] = (None, None)

    def drive(self, scheduler: Any, clamps: tuple[float | None, float | None]) -> None:
        """Set the rates by the torch ``scheduler``, clamped to ``clamps``."""
        self._scheduler, self._clamps = scheduler, clamps
        self._clamp()

    @property
    def step_each(self) -> str:
        """The schedule's clock: ``optimizer_step`` or ``epoch``."""
        return STEP_EACH_OPTIONS[1 if self._per_epoch else 0]

    @property
    def t(self) -> int:
        """Steps the schedule has taken on its clock."""
        if self._per_epoch and self._scheduler is not None:
            return int(self._scheduler.last_epoch)
        return self._clock.step - self._origin

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
            self._unclamp()
            self._clamp()

    def _advance(self, metric: float | None) -> None:
        if self._scheduler is None:
            return
        if self._clamps != (None, None):  # continue from the unclamped rates
            self._unclamp()
        if metric is not None:
            self._scheduler.step(metric)
        else:
            self._scheduler.step()
        self._clamp()

    def _unclamp(self) -> None:
        rates = self._scheduler.get_last_lr()
        for group, lr in zip(self._optimizer.param_groups, rates, strict=True):
            group["lr"] = lr

    def _clamp(self) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = curves.clip(group["lr"], *self._clamps)
