"""Learning-rate schedules: ACE's ``optimization.scheduler`` block.

A ``torch.optim.lr_scheduler`` class by name, or a curve of
``fme.core.schedule`` from ``lr0 = optimization.lr`` driving a ``LambdaLR``
(types, keys and clocks in the README). ``min_lr`` / ``max_lr`` clamp the rate
the optimiser sees; the schedule evolves unclamped.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer
from torch.optim import lr_scheduler as torch_lr

from fme.core import schedule as curves
from fme.core.schedule import Schedule, constant, cosine, exponential, linear

if TYPE_CHECKING:
    from fme.core.optimization import OptimizerClock


def _curves(lr0: float) -> dict[str, Callable[..., Schedule]]:
    """The curves as this block spells them, starting (or peaking) at ``lr0``."""
    return {
        "constant": lambda: constant(lr0),
        "linear": lambda *, total_steps, lr_end=0.0: linear(lr0, lr_end, total_steps),
        "exponential": lambda *, decay_rate, decay_steps, lr_end=0.0: _floor(
            exponential(lr0, decay_rate, decay_steps), lr_end
        ),
        "cosine": lambda *, total_steps, lr_end=0.0: cosine(lr0, lr_end, total_steps),
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
        "sequential": lambda *, schedulers, milestones: _sequential(
            schedulers, milestones, lr0=lr0
        ),
    }


def _floor(curve: Schedule, floor: float) -> Schedule:
    return lambda t: max(floor, curve(t))


SHORTHAND_TYPES = tuple(_curves(1.0))[:-1]  # all but sequential
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
    """ACE's ``optimization.scheduler`` block.

    Attributes:
        type: None (constant ``optimization.lr``), a curve, ``sequential``
            (``schedulers``: ``{type, kwargs}`` blocks, ``milestones``) or a
            ``torch.optim.lr_scheduler`` class name.
        kwargs: the schedule's arguments, plus ``min_lr`` / ``max_lr``.
        step_each: ``optimizer_step`` or ``epoch``; default ``epoch`` for a
            torch class (as in ACE), else ``optimizer_step``.
        step_each_iteration: ACE's spelling, true for ``optimizer_step``,
            false for ``epoch``; give at most one of the two.
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
            raise ValueError(f"{_PATH}: step_each or step_each_iteration, not both")
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
            self._parse(lr0=1.0)  # every key checked at load

    @property
    def resolved_step_each(self) -> str:
        """``step_each`` after ACE's ``step_each_iteration`` and the defaults."""
        if self.step_each_iteration is not None:
            return STEP_EACH_OPTIONS[0 if self.step_each_iteration else 1]
        torch_class = self.type not in (None, "sequential", *SHORTHAND_TYPES)
        return self.step_each or ("epoch" if torch_class else "optimizer_step")

    def build(
        self, optimizer: Optimizer, *, lr0: float, clock: "OptimizerClock"
    ) -> "LRSchedule":
        """The schedule of ``optimizer``'s rate, starting now on ``clock``; a
        torch class rejecting its kwargs raises naming the block's ``kwargs``."""
        schedule = LRSchedule(optimizer, clock=clock, step_each=self.resolved_step_each)
        if self.type is not None:
            part, clamps = self._parse(lr0=lr0)
            t = None if schedule.step_each == "epoch" else lambda: schedule.t
            schedule.drive(_drive(part, optimizer, lr0=lr0, t=t), clamps)
        return schedule

    def _parse(self, *, lr0: float) -> tuple[Any, tuple[Any, Any]]:
        """The block's ``_part`` and its clamps."""
        kwargs = dict(self.kwargs)
        clamps = {k: kwargs.pop(k) for k in _clamp_keys(self.type) if k in kwargs}
        curves.check_numbers(clamps, path=f"{_PATH}.kwargs")
        low, high = (clamps.get(k) for k in _CLAMPS)
        return _part(self.type, kwargs, _PATH, lr0=lr0), (low, high)


def _part(type_: Any, kwargs: Any, path: str, *, lr0: float) -> Any:
    """The curve of a block, or its torch scheduler as a ``functools.partial``
    of the optimiser."""
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
            types=_curves(lr0),
            member=lambda *block: _part(*block, lr0=lr0),
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
    _torch(cls, kwargs, path, None)
    return functools.partial(_torch, cls, kwargs, path)


def _torch(cls: type, kwargs: Any, path: str, optimizer: Any) -> Any:
    """``cls(optimizer, **kwargs)``; without an optimiser, only the keys checked."""
    try:
        inspect.signature(cls).bind(optimizer, **kwargs)
        return None if optimizer is None else cls(optimizer, **kwargs)
    except (TypeError, ValueError) as err:
        params = list(inspect.signature(cls).parameters)[1:]
        raise ValueError(
            f"{path}.kwargs {dict(kwargs)} are not accepted by "
            f"torch.optim.lr_scheduler.{cls.__name__} (arguments: {params}): {err}"
        ) from None


def _sequential(members: list[Any], milestones: list[int], *, lr0: float) -> Any:
    """One curve of curve members, else torch's ``SequentialLR``."""
    if not any(isinstance(m, functools.partial) for m in members):
        return curves.sequential(members, milestones)
    return functools.partial(  # a torch part, as ``_part`` returns one
        lambda optimizer: torch_lr.SequentialLR(
            optimizer, [_drive(m, optimizer, lr0=lr0) for m in members], milestones
        )
    )


def _drive(
    part: Any, optimizer: Optimizer, *, lr0: float, t: Any = None
) -> torch_lr.LRScheduler:
    """The scheduler of a part; a curve drives a ``LambdaLR`` of ``t()`` if
    given, else of torch's count."""
    if isinstance(part, functools.partial):
        return part(optimizer)
    return torch_lr.LambdaLR(optimizer, lambda e: part(e if t is None else t()) / lr0)


def _clamp_keys(type_: Any) -> list[str]:
    """The clamp keys of a type: a torch class's own argument wins over a clamp."""
    cls = getattr(torch_lr, type_, None) if isinstance(type_, str) else None
    own = inspect.signature(cls).parameters if inspect.isclass(cls) else {}
    return [key for key in _CLAMPS if key not in own]


class LRSchedule:
    """A learning-rate scheduler on a clock, with optional clamps.

    ``t`` counts the steps the schedule has taken: optimiser steps since it
    was built (read from ``clock``) or epochs (torch's count); the rate is
    ``lr(t)``, the rate of step ``t + 1``. ``step_each`` is its clock,
    ``optimizer_step`` or ``epoch``.
    """

    def __init__(
        self, optimizer: Optimizer, *, clock: "OptimizerClock", step_each: str
    ):
        self._optimizer, self._clock, self._origin = optimizer, clock, clock.step
        self.step_each = step_each
        self._scheduler: Any = None
        self._clamps: tuple[float | None, float | None] = (None, None)

    def drive(self, scheduler: Any, clamps: tuple[float | None, float | None]) -> None:
        """Set the rates by the torch ``scheduler``, clamped to ``clamps``."""
        self._scheduler, self._clamps = scheduler, clamps
        self._set_rates(*clamps)

    @property
    def t(self) -> int:
        """Steps the schedule has taken on its clock."""
        if self.step_each == "epoch" and self._scheduler is not None:
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
        if self.step_each == "optimizer_step":
            self._advance(None)

    def step_epoch(self, metric: float | None = None) -> None:
        """Call at the end of each epoch; ``metric`` (validation loss) if needed."""
        if self.step_each != "epoch":
            return
        if self.needs_metric and metric is None:
            raise ValueError(
                "ReduceLROnPlateau needs the validation loss: call "
                "step_epoch(metric=<validation loss>)"
            )
        self._advance(metric)

    def state_dict(self) -> dict[str, Any]:
        """``t`` (the position on the clock) and the torch scheduler's state."""
        scheduler = self._scheduler
        return {"t": self.t, "scheduler": scheduler and scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (after the clock) and set the rates."""
        if self.step_each == "optimizer_step":
            self._origin = self._clock.step - int(state.get("t", 0))
        if self._scheduler is not None and state.get("scheduler") is not None:
            self._scheduler.load_state_dict(state["scheduler"])
            self._set_rates(*self._clamps)

    def _advance(self, metric: float | None) -> None:
        if self._scheduler is None:
            return
        self._set_rates(None, None)  # continue from the unclamped rates
        if metric is None:
            self._scheduler.step()
        else:
            self._scheduler.step(metric)
        self._set_rates(*self._clamps)

    def _set_rates(self, low: float | None, high: float | None) -> None:
        """The scheduler's rates, clipped to ``[low, high]``."""
        rates = self._scheduler.get_last_lr()
        for group, lr in zip(self._optimizer.param_groups, rates, strict=True):
            group["lr"] = curves.clip(lr, low, high)
