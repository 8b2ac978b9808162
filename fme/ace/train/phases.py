"""Multi-phase training: the ``phases`` YAML list and its bookkeeping.

A run trains through its phases in order, e.g. one-step pre-training with
Adam, multi-step fine-tuning, then polishing with L-BFGS. A run without
``phases`` is one phase made of the top-level settings.

Each field a phase leaves null inherits the previous phase's value (the first
phase inherits the top-level ``optimization`` and ``stepper_training``
settings), except the length: a phase with neither ``max_epochs`` nor
``max_steps`` trains the top-level ``max_epochs``. What starts afresh in
every phase and what carries over:

- weights: carry over (LoRA adapters are merged into them at a phase's end);
- optimiser-step clock (``optimizer_step`` in metrics, top-level
  ``max_steps``): one global clock across phases, owned by the phase's
  ``Optimization``; every schedule reads its ``t`` from it as the steps since
  the schedule started;
- optimiser and learning-rate schedule: new in every phase (the phase's
  ``optimization``), so the schedule starts at the phase's first step;
- loss-weight schedules: carry over (keep their start and state) unless the
  phase sets ``loss_weight_schedules``, which then start at the phase's first
  step;
- epochs: counted globally (data order keeps changing); a phase that stopped
  mid-epoch on ``max_steps`` lets the next phase start at the next epoch;
- the best-checkpoint metric: reset at each phase (losses of different
  rollout lengths do not compare), so ``best_ckpt.tar`` is the best of the
  latest phase.

Every checkpoint records its phase (index, and the global step and epoch at
which the phase started), so a resumed run continues in the right phase at the
right step. At a phase's end ``training_checkpoints/phase_<index>.tar`` is
written (when there are several phases), with LoRA adapters merged.
"""

import dataclasses
import logging
from typing import Any

from fme.ace.models.lora_layouts import LORA_LAYOUTS
from fme.ace.stepper.rollout_length import ForwardStepsDistribution
from fme.ace.stepper.stepper import Stepper
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.core.distributed import DistributedContext
from fme.core.freezing import (
    FrozenParameterConfig,
    log_trainable_parameters,
    unfreeze_all,
)
from fme.core.lora import (
    LoRAConfig,
    apply_lora,
    has_lora,
    merge_lora,
    select_lora_targets,
)
from fme.core.loss_weight_schedule import LossWeightScheduleConfig
from fme.core.optimization import OptimizationConfig
from fme.core.parallelize import wrap_data_parallel


@dataclasses.dataclass
class PhaseConfig:
    """One phase of training; null fields inherit the previous phase's value.

    Attributes:
        name: a label for logs (optional).
        max_epochs: epochs in this phase.
        max_steps: optimiser steps in this phase. With both the phase ends at
            whichever comes first; with neither it trains the top-level
            ``max_epochs`` epochs (lengths are not inherited).
        optimization: the phase's optimiser and learning-rate schedule (e.g.
            ``{optimizer_type: LBFGS, lr: 1.0}``); a new optimiser starts.
        n_forward_steps: rollout length (int or distribution), as in
            ``stepper_training.n_forward_steps``.
        loss_weight_schedules: as in ``stepper_training.loss_weight_schedules``;
            given, they replace the previous schedules and start at t = 0;
            null keeps the previous schedules running.
        frozen_parameters: as in ``stepper_training.parameter_init.
            frozen_parameters``; ``{}`` trains everything.
        lora: as in ``stepper_training.lora``; adapters are added at the phase's
            start and merged at its end.
    """

    name: str = ""
    max_epochs: int | None = None
    max_steps: int | None = None
    optimization: OptimizationConfig | None = None
    n_forward_steps: int | ForwardStepsDistribution | None = None
    loss_weight_schedules: dict[str, LossWeightScheduleConfig] | None = None
    frozen_parameters: FrozenParameterConfig | None = None
    lora: LoRAConfig | None = None

    def __post_init__(self):
        for field in ("max_epochs", "max_steps"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"phases[].{field} must be >= 1 or null, got {value}")
        if isinstance(self.n_forward_steps, int) and self.n_forward_steps < 1:
            raise ValueError(
                f"phases[].n_forward_steps must be >= 1, got {self.n_forward_steps}"
            )


@dataclasses.dataclass
class ResolvedPhase:
    """A phase with every inherited setting filled in.

    Attributes:
        index: position in the run (0-based).
        name: label for logs.
        max_epochs: epochs in the phase (None: no epoch limit).
        max_steps: optimiser steps in the phase (None: no step limit).
        optimization: the phase's optimisation.
        stepper_training: the phase's training settings (rollout length and
            loss-weight schedules filled in).
        frozen_parameters: what is frozen in the phase.
        lora: the phase's adapters, or None.
        carries_loss_weights: the loss-weight schedules continue from the
            previous phase (not redefined).
    """

    index: int
    name: str
    max_epochs: int | None
    max_steps: int | None
    optimization: OptimizationConfig
    stepper_training: TrainStepperConfig
    frozen_parameters: FrozenParameterConfig
    lora: LoRAConfig | None
    carries_loss_weights: bool

    @property
    def label(self) -> str:
        """``phase <index>`` plus the name, for logs."""
        return f"phase {self.index}" + (f" ({self.name})" if self.name else "")


def resolve_phases(
    *,
    phases: list[PhaseConfig] | None,
    optimization: OptimizationConfig,
    stepper_training: TrainStepperConfig,
    max_epochs: int,
) -> list[ResolvedPhase]:
    """The run's phases with inherited settings filled in.

    Without ``phases`` the run is one phase of ``max_epochs`` epochs made of
    the top-level settings; with ``phases``, ``max_epochs`` is the length of
    phases that set neither ``max_epochs`` nor ``max_steps``.

    Raises:
        ValueError: if ``phases`` is an empty list.
    """
    if phases is None:
        return [
            ResolvedPhase(
                index=0,
                name="",
                max_epochs=max_epochs,
                max_steps=None,
                optimization=optimization,
                stepper_training=stepper_training,
                frozen_parameters=stepper_training.parameter_init.frozen_parameters,
                lora=stepper_training.lora,
                carries_loss_weights=True,
            )
        ]
    if not phases:
        raise ValueError("phases must list at least one phase, or be omitted")
    resolved: list[ResolvedPhase] = []
    training = stepper_training
    frozen = stepper_training.parameter_init.frozen_parameters
    lora = stepper_training.lora
    for index, phase in enumerate(phases):
        optimization = phase.optimization or optimization
        if phase.n_forward_steps is not None:
            training = dataclasses.replace(
                training, n_forward_steps=phase.n_forward_steps
            )
        if phase.loss_weight_schedules is not None:
            training = dataclasses.replace(
                training, loss_weight_schedules=dict(phase.loss_weight_schedules)
            )
        frozen = phase.frozen_parameters or frozen
        lora = phase.lora or lora
        no_length = phase.max_epochs is None and phase.max_steps is None
        resolved.append(
            ResolvedPhase(
                index=index,
                name=phase.name,
                max_epochs=max_epochs if no_length else phase.max_epochs,
                max_steps=phase.max_steps,
                optimization=optimization,
                stepper_training=training,
                frozen_parameters=frozen,
                lora=lora,
                carries_loss_weights=phase.loss_weight_schedules is None,
            )
        )
    return resolved


@dataclasses.dataclass
class PhaseProgress:
    """Where a phase started; stored in every checkpoint under ``phase``.

    Attributes:
        index: the phase being trained.
        start_step: the global optimiser step at which it started.
        start_epoch: the global epoch at which it started.
    """

    index: int = 0
    start_step: int = 0
    start_epoch: int = 0

    def to_state(self) -> dict[str, Any]:
        """Plain data for the checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "PhaseProgress":
        """Read ``to_state()`` output; a checkpoint without it is in phase 0."""
        if state is None:
            return cls()
        return cls(
            index=int(state["index"]),
            start_step=int(state["start_step"]),
            start_epoch=int(state["start_epoch"]),
        )

    def trainer_limits(
        self, phase: ResolvedPhase, *, run_max_steps: int | None
    ) -> tuple[int | None, int | None]:
        """Global ``(max_epochs, max_steps)`` for the phase's trainer.

        ``run_max_steps`` (top-level ``max_steps``) caps the global step too.
        """
        max_epochs = (
            None if phase.max_epochs is None else self.start_epoch + phase.max_epochs
        )
        limits = [
            limit
            for limit in (
                None if phase.max_steps is None else self.start_step + phase.max_steps,
                run_max_steps,
            )
            if limit is not None
        ]
        return max_epochs, (min(limits) if limits else None)

    def phase_finished(self, phase: ResolvedPhase, *, epoch: int, step: int) -> bool:
        """Whether the phase reached its own length at global ``epoch``/``step``."""
        by_epochs = (
            phase.max_epochs is not None
            and epoch - self.start_epoch >= phase.max_epochs
        )
        by_steps = (
            phase.max_steps is not None and step - self.start_step >= phase.max_steps
        )
        return by_epochs or by_steps


def check_phase_network_settings(stepper: Stepper, phase: ResolvedPhase) -> None:
    """Raise now if the phase's freezing or LoRA patterns do not fit the network.

    Only inspects names, so a bad later phase fails before the first phase
    trains. Call on the network without adapters.
    """
    module = stepper.base_module
    phase.frozen_parameters.check([n for n, _ in module.named_parameters()])
    if phase.lora is not None:
        select_lora_targets(module, phase.lora, layouts=LORA_LAYOUTS)


def prepare_network(
    stepper: Stepper, phase: ResolvedPhase, *, dist: DistributedContext
) -> None:
    """Freeze, add LoRA adapters, compile and wrap for data parallelism for ``phase``.

    Starts from a fully trainable, unwrapped network, so each phase's
    freezing is its own. Logs how many parameters train.
    """
    module = stepper.base_module
    if has_lora(module):
        merge_lora(module)
    unfreeze_all(module)
    frozen = phase.frozen_parameters.apply(module)
    if frozen:
        logging.info("%s: froze %s", phase.label, frozen)
    if phase.lora is not None:
        adapted = apply_lora(module, phase.lora, layouts=LORA_LAYOUTS)
        logging.info(
            "%s: LoRA rank %d on %s", phase.label, phase.lora.rank, ", ".join(adapted)
        )
    log_trainable_parameters(module, label=phase.label)
    compile = phase.stepper_training.compile
    stepper.wrap_module(
        lambda network: wrap_data_parallel(network, dist, compile=compile)
    )


def finish_network(stepper: Stepper) -> int:
    """Merge LoRA adapters into the base weights at a phase's end.

    Returns:
        The number of merged weights (0 without LoRA).
    """
    return merge_lora(stepper.base_module)
