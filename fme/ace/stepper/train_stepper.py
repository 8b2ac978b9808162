"""Training of a stepper's rollouts: losses per step into one optimiser step."""

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from fme.ace.corrector.inverse import CorrectorInverse
from fme.ace.data.batch import BatchData
from fme.ace.step.step import StepOutput
from fme.ace.stepper.stepper import Stepper
from fme.core.corrector.loss import CorrectorLossConfig, build_step_output_loss
from fme.core.distributed import DistributedContext
from fme.core.lora import LoRAConfig, adapter_state_dict, has_lora
from fme.core.loss import (
    GLOBAL_MEAN_TERM,
    MAIN_TERM,
    REGULARIZATION_TERM,
    StepLossConfig,
    StepOutputLoss,
    StepOutputLossResult,
)
from fme.core.loss_scaling import LossScalingConfig
from fme.core.loss_weight_schedule import (
    LossWeightScheduleConfig,
    LossWeightSchedules,
    build_loss_weight_schedules,
    check_loss_weight_schedule_terms,
)
from fme.core.metrics_aggregator import MeanAggregator
from fme.core.optimization import Optimization
from fme.core.parameter_init import ParameterInitConfig
from fme.core.tensors import TensorDict

_NONFINITE_POLICIES = ("raise", "skip_batch")


@dataclasses.dataclass
class ForwardStepsOutcome:
    """One possible rollout length and its probability.

    Attributes:
        n_forward_steps: the rollout length.
        probability: its probability (all outcomes must sum to 1).
    """

    n_forward_steps: int
    probability: float


@dataclasses.dataclass
class ForwardStepsDistribution:
    """A random rollout length per batch: ``{outcomes: [...]}``.

    Attributes:
        outcomes: the possible lengths and their probabilities.
    """

    outcomes: list[ForwardStepsOutcome]

    def __post_init__(self):
        if not self.outcomes:
            raise ValueError("stepper_training.n_forward_steps.outcomes is empty")
        total = sum(o.probability for o in self.outcomes)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                "stepper_training.n_forward_steps.outcomes probabilities must sum "
                f"to 1, got {total}"
            )
        for o in self.outcomes:
            if o.n_forward_steps < 1 or o.probability < 0:
                raise ValueError(
                    "stepper_training.n_forward_steps.outcomes need "
                    f"n_forward_steps >= 1 and probability >= 0, got {o}"
                )


class NonFiniteLossError(RuntimeError):
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
        loss_scaling: per-point, detached weights of a loss term's pointwise
            loss before its mean, per term: ``{main: [{type: area}, ...],
            corrector_regularization: [...]}``; see ``fme.core.loss_scaling``.
            Order inside a term: per-point loss -> scaling -> mean -> term weight.
        parameter_init: start from a checkpoint's weights (``weights_path``,
            ``exclude_parameters``) and freeze parameters
            (``frozen_parameters``); applied by the training entry point when a
            run starts. See ``fme.core.parameter_init``.
        lora: low-rank adapters (``rank``, ``alpha``, ``target_modules``,
            ``trainable_parameters``); base weights are frozen and adapters are
            merged into them at the end of training (of each phase). See
            ``fme.core.lora``.
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
    loss_scaling: dict[str, list[LossScalingConfig]] = dataclasses.field(
        default_factory=dict
    )
    parameter_init: ParameterInitConfig = dataclasses.field(
        default_factory=ParameterInitConfig
    )
    lora: LoRAConfig | None = None

    def __post_init__(self):
        check_loss_weight_schedule_terms(
            self.loss_weight_schedules, term_names=self.loss_term_names
        )
        scalable = [MAIN_TERM, REGULARIZATION_TERM]
        unknown = [t for t in self.loss_scaling if t not in scalable]
        if unknown:
            raise ValueError(
                f"stepper_training.loss_scaling has unknown term(s) {unknown}; "
                f"allowed: {scalable}"
            )
        if self.loss_scaling.get(MAIN_TERM) and self.loss.scaling:
            raise ValueError(
                "set the main term's scaling once: in stepper_training."
                "loss_scaling.main or in stepper_training.loss.scaling, not both"
            )
        if self.loss_scaling.get(REGULARIZATION_TERM):
            regularization = (
                self.corrector_loss.regularization if self.corrector_loss else None
            )
            if regularization is None:
                raise ValueError(
                    "stepper_training.loss_scaling.corrector_regularization needs "
                    "stepper_training.corrector_loss.regularization"
                )
            if regularization.scaling:
                raise ValueError(
                    "set the regularisation scaling once: in stepper_training."
                    "loss_scaling.corrector_regularization or in corrector_loss."
                    "regularization.scaling, not both"
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
        names = [MAIN_TERM]
        if self.loss.global_mean_type is not None:
            names.append(GLOBAL_MEAN_TERM)
        if self.corrector_loss is not None and self.corrector_loss.regularization:
            names.append(REGULARIZATION_TERM)
        return names

    @property
    def max_forward_steps(self) -> int:
        """The longest rollout a batch may need."""
        if isinstance(self.n_forward_steps, int):
            return self.n_forward_steps
        return max(o.n_forward_steps for o in self.n_forward_steps.outcomes)

    def build(
        self,
        stepper: Stepper,
        *,
        seed: int = 0,
        dist: DistributedContext | None = None,
    ) -> "TrainStepper":
        """The train stepper for ``stepper``; corrector-loss misuse raises here.

        Args:
            stepper: the model.
            seed: seeds the per-batch rollout-length sampling (same on all ranks).
            dist: lets every rank agree to skip a batch with a non-finite loss.
        """
        if self.corrector_loss is not None and not stepper.step.corrector_enabled:
            raise ValueError(
                "stepper_training.corrector_loss is set but the step has no "
                "corrector; add stepper.step.config.corrector or remove "
                "stepper_training.corrector_loss"
            )
        if (
            self.corrector_loss is not None
            and self.corrector_loss.needs_corrector_inverse
            and not isinstance(stepper.step.corrector, CorrectorInverse)
        ):
            raise ValueError(
                "stepper_training.corrector_loss.precorrector_optimization.target "
                "'inverse' needs a corrector with local inverses (nearest "
                f"pre-images), but {type(stepper.step.corrector).__name__} has "
                "none; use target 'raw' or a corrector such as atmosphere_corrector"
            )
        gridded_ops = stepper.dataset_info.gridded_operations
        loss_config = self.loss
        if self.loss_scaling.get(MAIN_TERM):
            loss_config = dataclasses.replace(
                self.loss, scaling=list(self.loss_scaling[MAIN_TERM])
            )
        corrector_loss = self.corrector_loss
        if corrector_loss is not None and self.loss_scaling.get(REGULARIZATION_TERM):
            assert corrector_loss.regularization is not None
            corrector_loss = dataclasses.replace(
                corrector_loss,
                regularization=dataclasses.replace(
                    corrector_loss.regularization,
                    scaling=list(self.loss_scaling[REGULARIZATION_TERM]),
                ),
            )
        step_loss = loss_config.build(
            out_names=stepper.out_names,
            normalizer=stepper.loss_normalizer,
            gridded_ops=gridded_ops,
        )
        loss = build_step_output_loss(
            corrector_loss,
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
        )
        return TrainStepper(
            config=self,
            stepper=stepper,
            loss=loss,
            loss_weights=schedules,
            seed=seed,
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
        config: the ``stepper_training`` config.
        stepper: the model.
        loss: the one loss object of every step (a ``StepOutputLoss``).
        loss_weights: weight schedules of the named loss terms.
        seed: seeds the per-batch rollout length sampling.
        dist: the distributed context (None: one process).
    """

    def __init__(
        self,
        *,
        config: TrainStepperConfig,
        stepper: Stepper,
        loss: StepOutputLoss,
        loss_weights: LossWeightSchedules,
        seed: int = 0,
        dist: DistributedContext | None = None,
    ):
        self.config = config
        self.stepper = stepper
        self.loss = loss
        self.loss_weights = loss_weights
        self._rng = np.random.default_rng(seed)
        self._dist = dist or DistributedContext()
        self._warned_empty_uncorrected = False

    @property
    def n_timesteps(self) -> int:
        """Times per data window: the initial condition plus the longest rollout."""
        return self.config.max_forward_steps + 1

    def _sample_n_forward_steps(self) -> int:
        n = self.config.n_forward_steps
        if isinstance(n, int):
            return n
        lengths = [o.n_forward_steps for o in n.outcomes]
        probs = [o.probability for o in n.outcomes]
        return int(self._rng.choice(lengths, p=probs))

    def _rollout_inputs(
        self, batch: BatchData, n_steps: int
    ) -> tuple[TensorDict, TensorDict]:
        data = batch.data
        n_ens = self.config.n_ensemble
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
            optimization: owns backward and the optimiser.
            where: position for error messages, e.g. "epoch 2, batch 7".

        Raises:
            NonFiniteLossError: a loss term is NaN/inf and the policy is ``raise``.
        """
        n_steps = self._sample_n_forward_steps()
        weights = self.loss_weights.weights()
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
                optimization.step_weights()
        if outputs is None:
            optimization.discard()
            return TrainOutput({"skipped_batches": 1.0}, n_steps, skipped=True)
        metrics, term_losses = outputs
        self.loss_weights.step_optimizer(term_losses)
        metrics.update({f"loss_weight/{k}": float(v) for k, v in weights.items()})
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
        n_steps = self.config.max_forward_steps
        outputs = self._run(
            batch,
            n_steps=n_steps,
            optimization=None,
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
        optimization: Optimization | None,
        term_weights: dict[str, float],
        where: str,
    ) -> tuple[dict[str, float], dict[str, float]] | None:
        initial, forcing = self._rollout_inputs(batch, n_steps)
        accumulate = optimization is not None and optimization.use_gradient_accumulation
        rollout = self.stepper.rollout(
            initial_condition=initial,
            forcing=forcing,
            n_forward_steps=n_steps,
            detach_uncorrected=not self.loss.needs_uncorrected_grad,
            detach_between_steps=accumulate,
            checkpoint_after_n_steps=(
                optimization.checkpoint_after_n_forward_steps
                if optimization is not None
                else None
            ),
        )
        metrics = MeanAggregator()
        term_sums: dict[str, float] = {}
        total_loss = 0.0
        for i in range(n_steps):
            with (
                optimization.rollout_step_context(is_last=i == n_steps - 1)
                if optimization is not None
                else contextlib.nullcontext()
            ):
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
        n_optimized = 1 if self.config.optimize_last_step_only else n_steps
        term_losses = {k: v / n_optimized for k, v in term_sums.items()}
        return step_metrics, term_losses

    def _run_step(
        self,
        rollout: Iterator[StepOutput],
        batch: BatchData,
        *,
        step: int,
        n_steps: int,
        optimization: Optimization | None,
        term_weights: dict[str, float],
        where: str,
        metrics: MeanAggregator,
    ) -> tuple[float | None, dict[str, float]] | None:
        """Forward, loss and (with accumulation) backward of one rollout step.

        Returns the step's detached total and raw term losses (None when the
        step is not optimised), or None when a loss term is not finite and the
        batch is skipped.
        """
        out = next(rollout)
        self._check_uncorrected(out)
        target = {n: batch.data[n][:, step + 1] for n in self.stepper.out_names}
        result = self.loss(out, target, step=step, term_weights=term_weights)
        bad_term = _first_nonfinite_term(result)
        if self.config.on_nonfinite_loss == "skip_batch" and self._dist.is_distributed:
            any_bad = self._dist.reduce_max(torch.tensor(float(bad_term is not None)))
            if bad_term is None and float(any_bad) > 0:
                bad_term = "(on another rank)"
        if bad_term is not None:
            message = (
                f"loss term {bad_term!r} is not finite at rollout step {step}"
                f"{', ' + where if where else ''}"
            )
            if self.config.on_nonfinite_loss == "raise":
                raise NonFiniteLossError(
                    message + "; training stopped, the last checkpoint is intact"
                )
            logging.warning("%s; skipping the batch", message)
            return None
        self._record_step_metrics(metrics, result, out, step=step)
        if self.config.optimize_last_step_only and step != n_steps - 1:
            return None, {}
        total = result.total()
        if optimization is not None:
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
            "rng": self._rng.bit_generator.state,
        }
        if has_lora(self.stepper.base_module):
            state["lora"] = adapter_state_dict(self.stepper.base_module)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output (weights into the existing network)."""
        self.stepper.load_weights(state["stepper"], adapters=state.get("lora"))
        self.loss_weights.load_state_dict(state["loss_weights"])
        self._rng.bit_generator.state = state["rng"]


def _first_nonfinite_term(result: StepOutputLossResult) -> str | None:
    for name, value in result.terms().items():
        if not torch.isfinite(value.detach()).all():
            return name
    return None
