"""Training of a stepper's rollouts: losses per step into one optimiser step."""

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch

from fme.ace.corrector.inverse import CorrectorInverse
from fme.ace.data.batch import BatchData
from fme.ace.step.step import StepOutput
from fme.ace.stepper.rollout_length import (
    ForwardStepsDistribution,
    ForwardStepsOutcome,
    RolloutLengthSampler,
    max_forward_steps,
)
from fme.ace.stepper.stepper import Stepper
from fme.core.corrector.loss import (
    REGULARIZATION_TERM,
    CorrectorLossConfig,
    StepOutputLoss,
    StepOutputLossResult,
    build_step_output_loss,
    loss_term_names,
)
from fme.core.distributed import DistributedContext
from fme.core.lora import LoRAConfig, adapter_state_dict, has_lora
from fme.core.loss import MAIN_TERM, StepLossConfig
from fme.core.loss_weight_schedule import (
    LossWeightScheduleConfig,
    LossWeightSchedules,
    build_loss_weight_schedules,
    check_loss_weight_schedule_terms,
)
from fme.core.metrics_aggregator import MeanAggregator
from fme.core.nonfinite import NonFiniteError
from fme.core.optimization import (
    NullOptimization,
    Optimization,
    OptimizationABC,
    OptimizerClock,
)
from fme.core.parameter_init import ParameterInitConfig
from fme.core.tensors import TensorDict

_NONFINITE_POLICIES = ("raise", "skip_batch")
_SCALABLE_TERMS = (MAIN_TERM, REGULARIZATION_TERM)

__all__ = [  # the rollout-length configs are re-exported for their old import path
    "ForwardStepsDistribution",
    "ForwardStepsOutcome",
    "NonFiniteLossError",
    "TrainOutput",
    "TrainStepper",
    "TrainStepperConfig",
]


class NonFiniteLossError(NonFiniteError):
    """A loss term became NaN or infinite."""


class _SkipBatch(Exception):
    """The first loss evaluation of a closure step was not finite (skip policy)."""


@dataclasses.dataclass
class TrainStepperConfig:
    """ACE's ``stepper_training`` section.

    Attributes:
        loss: the main (step) loss.
        n_forward_steps: rollout length, an int or a distribution
            ``{outcomes: [{n_forward_steps, probability}, ...]}`` sampled per batch.
        optimize_last_step_only: only the last rollout step's loss is optimised.
        n_ensemble: ensemble members per sample (>= 2 for the ensemble loss).
        corrector_loss: corrector-aware training (pre-corrector optimisation
            and/or corrector regularisation); None trains on corrected output.
        loss_weight_schedules: weight schedules of named loss terms, e.g.
            ``{corrector_regularization: {type: exponential, ...}}``.
        on_nonfinite_loss: ``raise`` (default) stops training naming the loss
            term, step, epoch and batch; ``skip_batch`` drops the batch and
            counts it in the ``skipped_batches`` metric (under data parallelism
            every rank skips it together).
        parameter_init: start from a checkpoint's weights (``weights_path``,
            ``exclude_parameters``) and freeze parameters
            (``frozen_parameters``); applied by the training entry point when a
            run starts. See ``fme.core.parameter_init``.
        lora: low-rank adapters (``rank``, ``alpha``, ``target_modules``,
            ``trainable_parameters``); base weights are frozen and adapters are
            merged into them at the end of training (of each phase). See
            ``fme.core.lora``.
        compile: run the network (only the network) through
            ``torch.compile`` during training, validation and inline inference
            (not an ACE key; default off). Compiling takes seconds to minutes
            at the first step and again when the mode changes (training,
            evaluation); if it fails (e.g. no C++ compiler on a CPU machine)
            the reason is logged as a warning and the network runs eagerly.
            See ``fme.core.compiled_network``.
    """

    loss: StepLossConfig = dataclasses.field(default_factory=StepLossConfig)
    n_forward_steps: int | ForwardStepsDistribution = 1
    optimize_last_step_only: bool = False
    n_ensemble: int = 1
    corrector_loss: CorrectorLossConfig | None = None
    loss_weight_schedules: dict[str, LossWeightScheduleConfig] = dataclasses.field(
        default_factory=dict
    )
    on_nonfinite_loss: str = "raise"
    parameter_init: ParameterInitConfig = dataclasses.field(
        default_factory=ParameterInitConfig
    )
    lora: LoRAConfig | None = None
    compile: bool = False

    @classmethod
    def migrate_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Former spellings to current ones (applied by the config loader).

        ``loss_scaling: {main: [...], corrector_regularization: [...]}`` moves
        to each term's own key, ``loss.scaling`` and
        ``corrector_loss.regularization.scaling``.
        """
        if "loss_scaling" not in data:
            return data
        data = dict(data)
        moved = dict(data.pop("loss_scaling") or {})
        unknown = [t for t in moved if t not in _SCALABLE_TERMS]
        if unknown:
            raise ValueError(
                f"stepper_training.loss_scaling has unknown term(s) {unknown}; "
                f"allowed: {list(_SCALABLE_TERMS)}"
            )
        owners = {
            MAIN_TERM: ("loss",),
            REGULARIZATION_TERM: ("corrector_loss", "regularization"),
        }
        for term, scaling in moved.items():
            if not scaling:
                continue
            if term == MAIN_TERM:
                data.setdefault("loss", {})
            node = data
            for key in owners[term]:
                if not isinstance(node.get(key), dict):
                    raise ValueError(
                        f"stepper_training.loss_scaling.{term} needs "
                        f"stepper_training.{'.'.join(owners[term])}"
                    )
                node[key] = dict(node[key])
                node = node[key]
            if node.get("scaling"):
                raise ValueError(
                    f"set the {term} term's scaling once, in stepper_training."
                    f"{'.'.join(owners[term])}.scaling (loss_scaling.{term} is its "
                    "former spelling)"
                )
            node["scaling"] = scaling
            logging.warning(
                "stepper_training.loss_scaling.%s is now spelled "
                "stepper_training.%s.scaling",
                term,
                ".".join(owners[term]),
            )
        return data

    def __post_init__(self):
        check_loss_weight_schedule_terms(
            self.loss_weight_schedules, term_names=self.loss_term_names
        )
        if isinstance(self.n_forward_steps, int) and self.n_forward_steps < 1:
            raise ValueError(
                "stepper_training.n_forward_steps must be >= 1, got "
                f"{self.n_forward_steps}"
            )
        if self.n_ensemble < 1:
            raise ValueError(
                f"stepper_training.n_ensemble must be >= 1, got {self.n_ensemble}"
            )
        if self.on_nonfinite_loss not in _NONFINITE_POLICIES:
            raise ValueError(
                f"stepper_training.on_nonfinite_loss {self.on_nonfinite_loss!r} "
                f"is unknown; allowed: {list(_NONFINITE_POLICIES)}"
            )

    @property
    def loss_term_names(self) -> list[str]:
        """The named terms this configuration's total loss is made of."""
        return loss_term_names(
            global_mean=self.loss.global_mean_type is not None,
            regularization=bool(
                self.corrector_loss and self.corrector_loss.regularization
            ),
        )

    @property
    def max_forward_steps(self) -> int:
        """The longest rollout a batch may need."""
        return max_forward_steps(self.n_forward_steps)

    def build(
        self,
        stepper: Stepper,
        *,
        clock: OptimizerClock | None = None,
        seed: int = 0,
        dist: DistributedContext | None = None,
    ) -> "TrainStepper":
        """The train stepper for ``stepper``; corrector-loss misuse raises here.

        Args:
            stepper: the model.
            clock: the optimiser clock the loss-weight schedules read (the
                ``Optimization``'s); None: a clock of its own at 0, for
                validation only.
            seed: seeds the per-batch rollout-length sampling (same on all ranks).
            dist: lets every rank agree to skip a batch with a non-finite loss.
        """
        if self.corrector_loss is not None and stepper.corrector is None:
            raise ValueError(
                "stepper_training.corrector_loss is set but the step has no "
                "corrector; add stepper.step.config.corrector or remove "
                "stepper_training.corrector_loss"
            )
        if (
            self.corrector_loss is not None
            and self.corrector_loss.needs_corrector_inverse
            and not isinstance(stepper.corrector, CorrectorInverse)
        ):
            raise ValueError(
                "stepper_training.corrector_loss.precorrector_optimization.target "
                "'inverse' needs a corrector with local inverses (nearest "
                f"pre-images), but {type(stepper.corrector).__name__} has "
                "none; use target 'raw' or a corrector such as atmosphere_corrector"
            )
        gridded_ops = stepper.dataset_info.gridded_operations
        step_loss = self.loss.build(
            out_names=stepper.out_names,
            normalizer=stepper.loss_normalizer,
            gridded_ops=gridded_ops,
        )
        loss = build_step_output_loss(
            self.corrector_loss,
            step_loss=step_loss,
            normalizer=stepper.loss_normalizer,
            out_names=stepper.out_names,
            n_ensemble=self.n_ensemble,
            gridded_ops=gridded_ops,
        )
        schedules = build_loss_weight_schedules(
            self.loss_weight_schedules,
            term_names=loss.term_names,
            base_weights=loss.base_term_weights,
            clock=clock or OptimizerClock(),
        )
        return TrainStepper(
            stepper=stepper,
            loss=loss,
            loss_weights=schedules,
            rollout_length=RolloutLengthSampler(self.n_forward_steps, seed=seed),
            optimize_last_step_only=self.optimize_last_step_only,
            on_nonfinite_loss=self.on_nonfinite_loss,
            n_ensemble=self.n_ensemble,
            dist=dist,
        )


@dataclasses.dataclass
class TrainOutput:
    """What one batch of training or validation produced.

    Attributes:
        metrics: scalar metrics of the batch (plain floats).
        n_forward_steps: rollout length used.
        skipped: whether the batch was dropped for a non-finite loss.
    """

    metrics: dict[str, float]
    n_forward_steps: int
    skipped: bool = False


class TrainStepper:
    """Rolls the stepper forward on a batch, computes losses, steps the optimiser.

    Args:
        stepper: the model.
        loss: the one loss object of every step (a ``StepOutputLoss``).
        loss_weights: weight schedules of the named loss terms.
        rollout_length: draws each batch's rollout length.
        optimize_last_step_only: only the last rollout step's loss is optimised.
        on_nonfinite_loss: ``raise`` or ``skip_batch``.
        n_ensemble: ensemble members per sample.
        dist: the distributed context (None: one process).
    """

    def __init__(
        self,
        *,
        stepper: Stepper,
        loss: StepOutputLoss,
        loss_weights: LossWeightSchedules,
        rollout_length: RolloutLengthSampler,
        optimize_last_step_only: bool = False,
        on_nonfinite_loss: str = "raise",
        n_ensemble: int = 1,
        dist: DistributedContext | None = None,
    ):
        self.stepper = stepper
        self.loss = loss
        self.loss_weights = loss_weights
        self._rollout_length = rollout_length
        self._last_step_only = optimize_last_step_only
        self._skip_nonfinite = on_nonfinite_loss == "skip_batch"
        self._n_ensemble = n_ensemble
        self._dist = dist or DistributedContext()
        self._warned_empty_uncorrected = False

    @property
    def n_timesteps(self) -> int:
        """Times per data window: the initial condition plus the longest rollout."""
        return self._rollout_length.max_length + 1

    def _rollout_inputs(
        self, batch: BatchData, n_steps: int
    ) -> tuple[TensorDict, TensorDict]:
        data = batch.data
        n_ens = self._n_ensemble
        initial = {n: data[n][:, 0] for n in self.stepper.prognostic_names}
        forcing = {n: data[n][:, : n_steps + 1] for n in self.stepper.forcing_names}
        if n_ens > 1:  # sample-major ensemble layout: index b * n_ens + e
            initial = {k: v.repeat_interleave(n_ens, dim=0) for k, v in initial.items()}
            forcing = {k: v.repeat_interleave(n_ens, dim=0) for k, v in forcing.items()}
        return initial, forcing

    def train_on_batch(
        self, batch: BatchData, optimization: Optimization, *, where: str = ""
    ) -> TrainOutput:
        """One optimiser step on ``batch``.

        Args:
            batch: windows of at least ``n_forward_steps + 1`` times.
            optimization: owns backward, the optimiser and the clock.
            where: position for error messages, e.g. "epoch 2, batch 7".

        Raises:
            NonFiniteLossError: a loss term is NaN/inf and the policy is ``raise``.
        """
        n_steps = self._rollout_length.sample()
        self.loss_weights.read_clock(optimization.clock)
        weights = self.loss_weights.weights()
        weight_metrics = self.loss_weights.metrics()
        if optimization.uses_closure:
            outputs = self._step_with_closure(
                batch,
                n_steps=n_steps,
                optimization=optimization,
                term_weights=weights,
                where=where,
            )
        else:
            outputs = self._run(
                batch,
                n_steps=n_steps,
                optimization=optimization,
                term_weights=weights,
                where=where,
            )
            if outputs is not None:
                self.loss_weights.observe(outputs[1])
                optimization.step_weights()
        if outputs is None:
            optimization.discard()
            return TrainOutput({"skipped_batches": 1.0}, n_steps, skipped=True)
        metrics, _ = outputs
        metrics.update(weight_metrics)
        metrics["skipped_batches"] = 0.0
        return TrainOutput(metrics, n_steps)

    def _step_with_closure(
        self,
        batch: BatchData,
        *,
        n_steps: int,
        optimization: Optimization,
        term_weights: dict[str, float],
        where: str,
    ) -> tuple[dict[str, float], dict[str, float]] | None:
        """One L-BFGS step: the rollout and loss re-run in every evaluation.

        Metrics and the losses reported to adaptive loss weights come from the
        first evaluation (the weights before the step), like for other
        optimisers; the term weights stay fixed within the step.
        """
        first: list[tuple[dict[str, float], dict[str, float]]] = []

        def run_forward() -> None:
            evaluation = f"L-BFGS evaluation {optimization.last_closure_evaluations}"
            outputs = self._run(
                batch,
                n_steps=n_steps,
                optimization=optimization,
                term_weights=term_weights,
                where=f"{where}, {evaluation}" if where else evaluation,
            )
            if outputs is None:
                if not first:
                    raise _SkipBatch()
                raise NonFiniteLossError(
                    f"a loss became non-finite in {evaluation} of a line search"
                    f"{', ' + where if where else ''}; the weights moved within "
                    "this step, so the batch cannot be skipped; lower "
                    "optimization.lr or keep line_search_fn: strong_wolfe"
                )
            if not first:
                first.append(outputs)
                self.loss_weights.observe(outputs[1])

        try:
            optimization.step_with_closure(run_forward)
        except _SkipBatch:
            return None
        metrics, term_losses = first[0]
        metrics["closure_evaluations"] = float(optimization.last_closure_evaluations)
        return metrics, term_losses

    @torch.no_grad()
    def validate_on_batch(self, batch: BatchData) -> TrainOutput:
        """The same loss terms as training, without gradients or updates."""
        n_steps = self._rollout_length.max_length
        outputs = self._run(
            batch,
            n_steps=n_steps,
            optimization=NullOptimization(),
            term_weights=self.loss_weights.weights(),
            where="validation",
        )
        assert outputs is not None
        metrics, _ = outputs
        return TrainOutput(metrics, n_steps)

    def _run(
        self,
        batch: BatchData,
        *,
        n_steps: int,
        optimization: OptimizationABC,
        term_weights: dict[str, float],
        where: str,
    ) -> tuple[dict[str, float], dict[str, float]] | None:
        initial, forcing = self._rollout_inputs(batch, n_steps)
        rollout = self.stepper.rollout(
            initial_condition=initial,
            forcing=forcing,
            n_forward_steps=n_steps,
            detach_uncorrected=not self.loss.needs_uncorrected_grad,
            detach_between_steps=optimization.use_gradient_accumulation,
            checkpoint_after_n_steps=optimization.checkpoint_after_n_forward_steps,
        )
        metrics = MeanAggregator()
        term_sums: dict[str, float] = {}
        total_loss = 0.0
        for i in range(n_steps):
            with optimization.rollout_step_context(is_last=i == n_steps - 1):
                outcome = self._run_step(
                    rollout,
                    batch,
                    step=i,
                    n_steps=n_steps,
                    optimization=optimization,
                    term_weights=term_weights,
                    where=where,
                    metrics=metrics,
                )
            if outcome is None:
                return None
            total, raw_terms = outcome
            if total is not None:
                total_loss += total
                for name, value in raw_terms.items():
                    term_sums[name] = term_sums.get(name, 0.0) + value
        step_metrics = metrics.get_means()
        step_metrics["loss"] = total_loss
        step_metrics["main_loss"] = term_sums.get(MAIN_TERM, 0.0)
        n_optimized = 1 if self._last_step_only else n_steps
        term_losses = {k: v / n_optimized for k, v in term_sums.items()}
        return step_metrics, term_losses

    def _run_step(
        self,
        rollout: Iterator[StepOutput],
        batch: BatchData,
        *,
        step: int,
        n_steps: int,
        optimization: OptimizationABC,
        term_weights: dict[str, float],
        where: str,
        metrics: MeanAggregator,
    ) -> tuple[float | None, dict[str, float]] | None:
        """Forward, loss and (with accumulation) backward of one rollout step.

        Returns the step's detached total and raw term losses (None when the
        step is not optimised), or None when a loss term is not finite and the
        batch is skipped.
        """
        device = batch.data[self.stepper.out_names[0]].device
        with optimization.autocast(device):
            out = next(rollout)  # the forward pass of this step runs here
        self._check_uncorrected(out)
        target = {n: batch.data[n][:, step + 1] for n in self.stepper.out_names}
        result = self.loss(out, target, step=step, term_weights=term_weights)
        bad_term = _first_nonfinite_term(result)
        if self._skip_nonfinite and self._dist.is_distributed:
            any_bad = self._dist.reduce_max(torch.tensor(float(bad_term is not None)))
            if bad_term is None and float(any_bad) > 0:
                bad_term = "(on another rank)"
        if bad_term is not None:
            message = (
                f"loss term {bad_term!r} is not finite at rollout step {step}"
                f"{', ' + where if where else ''}"
            )
            if not self._skip_nonfinite:
                raise NonFiniteLossError(message)
            logging.warning("%s; skipping the batch", message)
            return None
        self._record_step_metrics(metrics, result, out, step=step)
        if self._last_step_only and step != n_steps - 1:
            return None, {}
        total = result.total()
        optimization.accumulate_loss(total)
        raw_terms = {k: float(v.detach()) for k, v in result.raw_terms().items()}
        return float(total.detach()), raw_terms

    def _record_step_metrics(
        self,
        metrics: MeanAggregator,
        result: StepOutputLossResult,
        out: StepOutput,
        *,
        step: int,
    ) -> None:
        metrics.record(f"loss_step_{step}", result.main.total().detach())
        for name, value in result.main.get_channel_losses().items():
            metrics.record(f"loss/{name}", value.detach())
        if result.regularization is not None:
            reg = result.regularization.detach()
            metrics.record(f"corrector_regularization_step_{step}", reg)
            metrics.record("corrector_regularization", reg)
        for name, value in self.loss.correction_rms(out).items():
            metrics.record(f"correction_rms/{name}", value)

    def _check_uncorrected(self, out: StepOutput) -> None:
        if (
            self.loss.needs_uncorrected_grad
            and not out.uncorrected
            and not self._warned_empty_uncorrected
        ):
            self._warned_empty_uncorrected = True
            logging.warning(
                "the corrector ran but changed no variable, so the corrector loss "
                "has nothing to act on; check the corrector's variable names"
            )

    def get_state(self) -> dict[str, Any]:
        """The stepper, loss-weight schedules and the rollout-length sampler.

        With LoRA adapters the stepper's weights are saved merged (for
        inference) and ``lora`` holds the base weights and adapters (to resume).
        """
        state = {
            "stepper": self.stepper.get_state(),
            "loss_weights": self.loss_weights.state_dict(),
            "rng": self._rollout_length.get_state(),
        }
        if has_lora(self.stepper.base_module):
            state["lora"] = adapter_state_dict(self.stepper.base_module)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output (weights into the existing network).

        Load the optimisation (its clock) first: the loss-weight schedules
        find their position on it.
        """
        self.stepper.load_weights(state["stepper"], adapters=state.get("lora"))
        self.loss_weights.load_state_dict(state["loss_weights"])
        self._rollout_length.load_state(state["rng"])


def _first_nonfinite_term(result: StepOutputLossResult) -> str | None:
    for name, value in result.terms().items():
        if not torch.isfinite(value.detach()).all():
            return name
    return None
