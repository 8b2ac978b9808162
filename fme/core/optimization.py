"""Backward passes, gradient clipping, the optimiser and its clock.

One object owns backward and the optimiser. The train stepper hands it one
loss per optimised rollout step (``accumulate_loss``) and asks for one
optimiser step per batch (``step_weights``). With gradient accumulation each
loss is back-propagated at once (and the rollout state is detached between
steps by the stepper); otherwise the losses are summed and back-propagated
once.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from fme.core.lr_schedule import LRSchedule, SchedulerConfig

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "SGD": torch.optim.SGD,
}


@dataclasses.dataclass
class OptimizationConfig:
    """ACE's ``optimization`` section.

    Attributes:
        optimizer_type: one of ``Adam``, ``AdamW``, ``SGD``.
        lr: the base learning rate (lr0 of every schedule).
        kwargs: extra keyword arguments for the torch optimiser (validated at build).
        scheduler: the learning-rate schedule; none keeps ``lr`` constant.
        max_grad_norm: clip the global gradient norm to this value, if set.
        use_gradient_accumulation: back-propagate after each rollout step and
            detach the state between steps, so memory does not grow with the
            rollout length. Same update as plain backprop for a 1-step rollout.
        checkpoint_after_n_forward_steps: recompute activations in backward
            for rollout steps from this index on (activation checkpointing).
    """

    optimizer_type: str = "Adam"
    lr: float = 1e-3
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    max_grad_norm: float | None = None
    use_gradient_accumulation: bool = False
    checkpoint_after_n_forward_steps: int | None = None

    def __post_init__(self):
        if self.optimizer_type not in _OPTIMIZERS:
            raise ValueError(
                f"optimization.optimizer_type {self.optimizer_type!r} is unknown; "
                f"allowed: {sorted(_OPTIMIZERS)}"
            )
        if self.lr <= 0:
            raise ValueError(f"optimization.lr must be positive, got {self.lr}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(
                f"optimization.max_grad_norm must be positive, got {self.max_grad_norm}"
            )
        if (
            self.checkpoint_after_n_forward_steps is not None
            and self.checkpoint_after_n_forward_steps < 0
        ):
            raise ValueError(
                "optimization.checkpoint_after_n_forward_steps must be >= 0, got "
                f"{self.checkpoint_after_n_forward_steps}"
            )

    def build(
        self,
        parameters: Iterable[torch.nn.Parameter],
        *,
        no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> "Optimization":
        """The optimisation for ``parameters``.

        Args:
            parameters: the trainable parameters.
            no_sync: a context manager factory that suppresses gradient
                synchronisation (DDP's ``no_sync``), used for every backward of
                an accumulated rollout but the last.
        """
        params = [p for p in parameters if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: every parameter is frozen")
        try:
            optimizer = _OPTIMIZERS[self.optimizer_type](
                params, lr=self.lr, **self.kwargs
            )
        except TypeError as err:
            raise ValueError(
                f"optimization.kwargs {self.kwargs} are not accepted by "
                f"{self.optimizer_type}: {err}"
            ) from None
        return Optimization(
            optimizer=optimizer,
            schedule=self.scheduler.build(optimizer, lr0=self.lr),
            max_grad_norm=self.max_grad_norm,
            use_gradient_accumulation=self.use_gradient_accumulation,
            checkpoint_after_n_forward_steps=self.checkpoint_after_n_forward_steps,
            no_sync=no_sync,
        )


class Optimization:
    """Owns backward, clipping, the optimiser step and the optimiser-step clock.

    Args:
        optimizer: the torch optimiser.
        schedule: the learning-rate schedule.
        max_grad_norm: clip threshold or None.
        use_gradient_accumulation: back-propagate each loss immediately.
        checkpoint_after_n_forward_steps: see ``OptimizationConfig``.
        no_sync: see ``OptimizationConfig.build``.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        max_grad_norm: float | None,
        use_gradient_accumulation: bool,
        checkpoint_after_n_forward_steps: int | None,
        no_sync: Callable[[], AbstractContextManager[Any]] | None,
    ):
        self.optimizer = optimizer
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.use_gradient_accumulation = use_gradient_accumulation
        self.checkpoint_after_n_forward_steps = checkpoint_after_n_forward_steps
        self._no_sync = no_sync
        self._pending: list[torch.Tensor] = []
        self.optimizer_steps = 0

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def learning_rate(self) -> float:
        """The learning rate the next optimiser step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def rollout_step_context(self, *, is_last: bool) -> AbstractContextManager[Any]:
        """Wrap one rollout step's forward *and* backward in this context.

        With gradient accumulation every step but the last runs without
        gradient synchronisation (DDP's ``no_sync`` must cover the forward
        pass too), so there is exactly one all-reduce per optimiser step.
        """
        if self.use_gradient_accumulation and not is_last and self._no_sync is not None:
            return self._no_sync()
        return contextlib.nullcontext()

    def accumulate_loss(self, loss: torch.Tensor) -> None:
        """Take one optimised rollout step's loss.

        With gradient accumulation it is back-propagated now; otherwise it is
        kept and back-propagated (summed) in ``step_weights``.
        """
        if self.use_gradient_accumulation:
            loss.backward()
        else:
            self._pending.append(loss)

    def step_weights(self) -> None:
        """Back-propagate pending losses, clip, step the optimiser and the clock."""
        if self._pending:
            total = torch.stack(self._pending).sum()
            self._pending = []
            total.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        self.schedule.step_optimizer()

    def discard(self) -> None:
        """Drop pending losses and gradients (a skipped batch)."""
        self._pending = []
        self.optimizer.zero_grad(set_to_none=True)

    def step_epoch(self, metric: float | None = None) -> None:
        """Advance per-epoch learning-rate schedules.

        Args:
            metric: the epoch's validation (or training) loss, for schedules
                that need one (``ReduceLROnPlateau``).
        """
        self.schedule.step_epoch(metric if self.schedule.needs_metric else None)

    def get_state(self) -> dict[str, Any]:
        """Optimiser, schedule and clock state."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "optimizer_steps": self.optimizer_steps,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.optimizer_steps = int(state["optimizer_steps"])
