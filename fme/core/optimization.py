"""Backward passes, gradient clipping, the optimiser and its clock.

One object owns backward and the optimiser. The train stepper hands it one
loss per optimised rollout step (``accumulate_loss``) and asks for one
optimiser step per batch (``step_weights``). With gradient accumulation each
loss is back-propagated at once (and the rollout state is detached between
steps by the stepper); otherwise the losses are summed and back-propagated
once.

L-BFGS evaluates the loss several times per optimiser step (line search), so
it takes a closure instead: ``step_with_closure(run_forward)``, where
``run_forward`` re-runs the whole rollout and hands its losses to
``accumulate_loss``. Each evaluation zeroes the gradients, runs the forward
pass, back-propagates the summed loss and returns it; the optimiser-step clock
and the learning-rate schedule advance once per optimiser step, not per
evaluation. Under data parallelism every evaluation's backward all-reduces the
gradients, and the returned loss is averaged over ranks so that every rank's
line search takes the same decisions.

``Optimization`` owns the run's one ``OptimizerClock``: it ticks it once per
optimiser step, saves it once (``optimizer_steps``), and the learning-rate and
loss-weight schedules read it. Validation runs the same code with a
``NullOptimization`` (no backward, no step, no clock).
"""

import abc
import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from fme.core.fused_adam import SUPPORTED_DEVICES, FusedAdam, FusedAdamW
from fme.core.lr_schedule import LRSchedule, SchedulerConfig
from fme.core.nonfinite import NonFiniteError
from fme.core.number_check import check_number

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "SGD": torch.optim.SGD,
    "LBFGS": torch.optim.LBFGS,
}
CLOSURE_OPTIMIZERS = ("LBFGS",)
# torch's fused (single-kernel) implementations, equal to the loop one up to
# float rounding; used unless the user's kwargs choose an implementation.
_FUSED_OPTIMIZERS = ("Adam", "AdamW")
_FUSED_DEVICES = SUPPORTED_DEVICES
# The same kernels without torch.optim's Optimizer machinery, whose first use
# imports torch._dynamo (seconds of start-up); used for the fused path when
# the kwargs are among these (other kwargs, e.g. capturable, or unknown ones
# go to torch's class, which accepts them or names them in its error).
_LEAN_FUSED: dict[str, tuple[Callable[..., torch.optim.Optimizer], frozenset[str]]] = {
    "Adam": (
        FusedAdam,
        frozenset(
            {
                "betas",
                "eps",
                "weight_decay",
                "amsgrad",
                "maximize",
                "decoupled_weight_decay",
            }
        ),
    ),
    "AdamW": (
        FusedAdamW,
        frozenset({"betas", "eps", "weight_decay", "amsgrad", "maximize"}),
    ),
}
# numeric LBFGS kwargs: name -> (minimum, integer); also line_search_fn
_LBFGS_NUMBERS: dict[str, tuple[float, bool]] = {
    "max_iter": (1, True),
    "max_eval": (1, True),
    "tolerance_grad": (0.0, False),
    "tolerance_change": (0.0, False),
    "history_size": (1, True),
}
_LINE_SEARCHES = (None, "strong_wolfe")


class OptimizerClock:
    """The run's count of optimiser steps: the one clock every schedule reads.

    ``Optimization`` owns it, ticks it once per optimiser step and saves it
    once (``optimizer_steps``). A schedule starts at the clock's value when it
    is built and reads its ``t`` as the steps taken since.

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


@dataclasses.dataclass
class CheckpointConfig:
    """ACE's ``optimization.checkpoint``: activation checkpointing.

    Attributes:
        after_n_forward_steps: recompute activations in backward for rollout
            steps with index ``>= after_n_forward_steps`` (0-based); null (the
            default, ACE's infinity) never does.
        kwargs: ACE's extra arguments of ``torch.utils.checkpoint``; not
            supported here (must be empty).
    """

    after_n_forward_steps: int | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.after_n_forward_steps is not None:
            check_number(
                self.after_n_forward_steps,
                path="optimization.checkpoint.after_n_forward_steps",
                minimum=0,
                integer=True,
            )
        if self.kwargs:
            raise ValueError(
                "not supported here: optimization.checkpoint.kwargs "
                f"{sorted(self.kwargs)}; activation checkpointing always runs "
                "non-reentrant with torch's defaults, remove the kwargs"
            )


@dataclasses.dataclass
class OptimizationConfig:
    """ACE's ``optimization`` section.

    Attributes:
        optimizer_type: one of ``Adam``, ``AdamW``, ``SGD``, ``LBFGS``.
            ``LBFGS`` re-runs the rollout several times per optimiser step
            (see the module docstring); it needs
            ``use_gradient_accumulation: false`` and no ``max_grad_norm``.
        lr: the base learning rate (lr0 of every schedule).
        kwargs: extra keyword arguments for the torch optimiser (validated at
            build; ``Adam`` and ``AdamW`` use torch's fused implementation
            unless ``fused``, ``foreach`` or ``differentiable`` is given,
            run by ``fme.core.fused_adam`` unless other kwargs than
            ``betas``, ``eps``, ``weight_decay``, ``amsgrad``, ``maximize``
            (and Adam's ``decoupled_weight_decay``) need torch's class; for
            ``LBFGS`` at load: ``max_iter``, ``max_eval``,
            ``tolerance_grad``, ``tolerance_change``, ``history_size``,
            ``line_search_fn`` — ``strong_wolfe`` (default) or null).
        scheduler: the learning-rate schedule; none keeps ``lr`` constant.
        max_grad_norm: clip the global gradient norm to this value, if set.
        use_gradient_accumulation: back-propagate after each rollout step and
            detach the state between steps, so memory does not grow with the
            rollout length. Same update as plain backprop for a 1-step rollout.
        checkpoint: activation checkpointing (ACE's
            ``checkpoint.after_n_forward_steps``; the former spelling
            ``checkpoint_after_n_forward_steps`` is migrated on load).
        enable_automatic_mixed_precision: run the network's forward passes
            of training under ``torch.autocast`` in bfloat16 (ACE's key; also on
            CPU). Parameters, gradients and optimiser state stay float32; the
            spectral transforms, the corrector and the loss run in float32.
            Validation and inference run in float32, as in ACE.
    """

    optimizer_type: str = "Adam"
    lr: float = 1e-3
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    max_grad_norm: float | None = None
    use_gradient_accumulation: bool = False
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    enable_automatic_mixed_precision: bool = False

    @classmethod
    def migrate_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Former spellings to current ones (applied by the config loader)."""
        if "checkpoint_after_n_forward_steps" not in data:
            return data
        data = dict(data)
        after = data.pop("checkpoint_after_n_forward_steps")
        checkpoint = dict(data.get("checkpoint") or {})
        if "after_n_forward_steps" in checkpoint:
            raise ValueError(
                "optimization: give checkpoint.after_n_forward_steps or the former "
                "checkpoint_after_n_forward_steps, not both"
            )
        data["checkpoint"] = {**checkpoint, "after_n_forward_steps": after}
        return data

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
        if self.optimizer_type == "LBFGS":
            self._check_lbfgs()

    @property
    def uses_closure(self) -> bool:
        """Whether the optimiser re-evaluates the loss within a step (L-BFGS)."""
        return self.optimizer_type in CLOSURE_OPTIMIZERS

    def _check_lbfgs(self) -> None:
        if self.use_gradient_accumulation:
            raise ValueError(
                "optimization.optimizer_type LBFGS re-runs the whole rollout in "
                "each loss evaluation and cannot accumulate gradients step by "
                "step; set optimization.use_gradient_accumulation: false"
            )
        if self.max_grad_norm is not None:
            raise ValueError(
                "optimization.max_grad_norm is not supported with LBFGS: clipped "
                "gradients disagree with the loss its line search evaluates; "
                "remove max_grad_norm (the line search already bounds the step)"
            )
        allowed = sorted([*_LBFGS_NUMBERS, "line_search_fn"])
        for key, value in self.kwargs.items():
            if key not in allowed:
                raise ValueError(
                    f"optimization.kwargs.{key} is not an LBFGS option; allowed: "
                    f"{allowed}"
                )
            if key in _LBFGS_NUMBERS:
                minimum, integer = _LBFGS_NUMBERS[key]
                if integer and (isinstance(value, bool) or not isinstance(value, int)):
                    # torch needs an int here, not an integral float
                    raise ValueError(
                        f"optimization.kwargs.{key} must be of type int, got {value!r}"
                    )
                check_number(
                    value,
                    path=f"optimization.kwargs.{key}",
                    minimum=minimum,
                    integer=integer,
                )
        line_search = self.kwargs.get("line_search_fn", "strong_wolfe")
        if line_search not in _LINE_SEARCHES:
            raise ValueError(
                f"optimization.kwargs.line_search_fn {line_search!r} is unknown; "
                "allowed: strong_wolfe (default), null (fixed step lr)"
            )

    def _optimizer_and_kwargs(
        self, params: list[torch.nn.Parameter]
    ) -> tuple[Callable[..., torch.optim.Optimizer], dict[str, Any]]:
        """The optimiser class to build and its keyword arguments (but lr)."""
        torch_class = _OPTIMIZERS[self.optimizer_type]
        if self.optimizer_type == "LBFGS":
            return torch_class, {"line_search_fn": "strong_wolfe", **self.kwargs}
        kwargs = dict(self.kwargs)
        if not (
            self.optimizer_type in _FUSED_OPTIMIZERS
            and not {"fused", "foreach", "differentiable"} & kwargs.keys()
            and all(
                p.is_floating_point() and p.device.type in _FUSED_DEVICES
                for p in params
            )
        ):
            return torch_class, kwargs
        lean_class, lean_kwargs = _LEAN_FUSED[self.optimizer_type]
        if kwargs.keys() <= lean_kwargs:
            return lean_class, kwargs
        return torch_class, {**kwargs, "fused": True}

    def build(
        self,
        parameters: Iterable[torch.nn.Parameter],
        *,
        start_step: int = 0,
        no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
        mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> "Optimization":
        """The optimisation for ``parameters``.

        Args:
            parameters: the trainable parameters.
            start_step: optimiser steps the run already took (a later training
                phase); the clock starts there and the learning-rate schedule
                starts at ``t = 0``.
            no_sync: a context manager factory that suppresses gradient
                synchronisation (DDP's ``no_sync``), used for every backward of
                an accumulated rollout but the last.
            mean_over_ranks: averages a scalar over data-parallel ranks; the
                loss an L-BFGS closure returns goes through it (None: one
                process).
        """
        params = [p for p in parameters if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: every parameter is frozen")
        optimizer_class, kwargs = self._optimizer_and_kwargs(params)
        try:
            optimizer = optimizer_class(params, lr=self.lr, **kwargs)
        except TypeError as err:
            raise ValueError(
                f"optimization.kwargs {self.kwargs} are not accepted by "
                f"{self.optimizer_type}: {err}"
            ) from None
        clock = OptimizerClock(start_step)
        return Optimization(
            optimizer=optimizer,
            clock=clock,
            schedule=self.scheduler.build(optimizer, lr0=self.lr, clock=clock),
            max_grad_norm=self.max_grad_norm,
            use_gradient_accumulation=self.use_gradient_accumulation,
            checkpoint_after_n_forward_steps=self.checkpoint.after_n_forward_steps,
            no_sync=no_sync,
            uses_closure=self.uses_closure,
            mean_over_ranks=mean_over_ranks,
            autocast_dtype=(
                torch.bfloat16 if self.enable_automatic_mixed_precision else None
            ),
        )


class OptimizationABC(abc.ABC):
    """What a training rollout asks of its optimisation."""

    use_gradient_accumulation: bool
    checkpoint_after_n_forward_steps: int | None

    @abc.abstractmethod
    def rollout_step_context(self, *, is_last: bool) -> AbstractContextManager[Any]:
        """Wrap one rollout step's forward and backward in this context."""

    @abc.abstractmethod
    def accumulate_loss(self, loss: torch.Tensor) -> None:
        """Take one optimised rollout step's loss."""

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The context forward passes run in: full precision unless overridden."""
        del device
        return contextlib.nullcontext()


class NullOptimization(OptimizationABC):
    """Validation: the rollout and losses of training, nothing optimised."""

    use_gradient_accumulation = False
    checkpoint_after_n_forward_steps = None

    def rollout_step_context(self, *, is_last: bool) -> AbstractContextManager[Any]:
        """No context: there is no gradient synchronisation."""
        return contextlib.nullcontext()

    def accumulate_loss(self, loss: torch.Tensor) -> None:
        """Drop the loss: nothing is back-propagated."""


class Optimization(OptimizationABC):
    """Owns backward, clipping, the optimiser step and the optimiser clock.

    Args:
        optimizer: the torch optimiser.
        clock: the optimiser clock, ticked once per optimiser step.
        schedule: the learning-rate schedule (reading ``clock``).
        max_grad_norm: clip threshold or None.
        use_gradient_accumulation: back-propagate each loss immediately.
        checkpoint_after_n_forward_steps: ``OptimizationConfig.checkpoint``'s
            ``after_n_forward_steps``.
        no_sync: see ``OptimizationConfig.build``.
        uses_closure: the optimiser needs ``step_with_closure`` (L-BFGS).
        mean_over_ranks: see ``OptimizationConfig.build``.
        autocast_dtype: the ``torch.autocast`` dtype of forward passes, or
            None for full precision.
    """

    def __init__(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        clock: OptimizerClock,
        schedule: LRSchedule,
        max_grad_norm: float | None,
        use_gradient_accumulation: bool,
        checkpoint_after_n_forward_steps: int | None,
        no_sync: Callable[[], AbstractContextManager[Any]] | None,
        uses_closure: bool = False,
        mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        if uses_closure and use_gradient_accumulation:
            raise ValueError("a closure optimiser cannot accumulate gradients")
        self.optimizer = optimizer
        self.clock = clock
        self.schedule = schedule
        self.max_grad_norm = max_grad_norm
        self.use_gradient_accumulation = use_gradient_accumulation
        self.checkpoint_after_n_forward_steps = checkpoint_after_n_forward_steps
        self._no_sync = no_sync
        self._pending: list[torch.Tensor] = []
        self.uses_closure = uses_closure
        self._mean_over_ranks = mean_over_ranks
        self.last_closure_evaluations = 0
        self.autocast_dtype = autocast_dtype

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        """The context forward passes run in (mixed precision if enabled)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @property
    def optimizer_steps(self) -> int:
        """Optimiser steps the run has taken (the clock's count)."""
        return self.clock.step

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
        if self.uses_closure:
            raise RuntimeError(
                f"{type(self.optimizer).__name__} needs step_with_closure()"
            )
        if self._pending:
            total = torch.stack(self._pending).sum()
            self._pending = []
            total.backward()
        self._check_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.clock.tick()
        self.schedule.step_optimizer()

    def _check_gradients(self) -> None:
        """Clip (if set) and refuse a non-finite gradient before the step.

        The clip computes the global norm anyway; without clipping it is
        computed here (one reduction over the gradients).
        """
        grads = [p.grad for p in self.parameters if p.grad is not None]
        if not grads:
            return
        if self.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            self.discard()
            raise NonFiniteError(
                f"the gradient norm is {float(norm)} (the loss was finite) at "
                f"optimizer step {self.optimizer_steps + 1}; the optimiser step "
                "was not taken and the weights are unchanged. Lower "
                "optimization.lr, set optimization.max_grad_norm, or look for "
                "operations with infinite derivatives (sqrt or log at 0)"
            )

    def step_with_closure(self, run_forward: Callable[[], None]) -> None:
        """One optimiser step of a closure optimiser (L-BFGS).

        The closure handed to the optimiser zeroes the gradients, calls
        ``run_forward`` (which re-runs the rollout and passes each optimised
        step's loss to ``accumulate_loss``), back-propagates their sum and
        returns it (averaged over ranks). The optimiser may call it several
        times; the clock and the learning-rate schedule advance once.
        ``last_closure_evaluations`` counts the calls.

        Args:
            run_forward: the forward pass; may raise to abort the step (the
                weights are then unchanged if it raised on the first call).
        """
        self.last_closure_evaluations = 0

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=False)
            self._pending = []
            with torch.enable_grad():
                run_forward()
                if not self._pending:
                    raise RuntimeError("the forward pass produced no loss")
                total = torch.stack(self._pending).sum()
                self._pending = []
                total.backward()
            self.last_closure_evaluations += 1
            loss = total.detach()
            if self._mean_over_ranks is not None:
                loss = self._mean_over_ranks(loss)
            return loss

        before = [p.detach().clone() for p in self.parameters]
        try:
            self.optimizer.step(closure)  # type: ignore[arg-type]
        finally:
            self._pending = []
        bad = [i for i, p in enumerate(self.parameters) if not torch.isfinite(p).all()]
        if bad:
            with torch.no_grad():
                for p, saved in zip(self.parameters, before, strict=True):
                    p.copy_(saved)
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"the L-BFGS update of {len(bad)} parameter tensor(s) is not finite "
                f"at optimizer step {self.optimizer_steps + 1}; the weights were "
                "restored to before the step. Lower optimization.lr or use "
                "line_search_fn: strong_wolfe"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.clock.tick()
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
        """Optimiser, clock and learning-rate schedule state."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "optimizer_steps": self.clock.step,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output.

        Raises:
            ValueError: if the saved optimiser covers other parameters (e.g.
                the run resumes with different freezing or LoRA settings).
        """
        saved = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
        current = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved != current:
            raise ValueError(
                f"the checkpoint's optimiser updates {sum(saved)} parameter "
                f"tensors but this run trains {sum(current)}; resume with the "
                "frozen_parameters, lora and optimization settings the "
                "checkpoint was written with"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.clock.load(int(state["optimizer_steps"]))
        self.schedule.load_state_dict(state["schedule"])
