"""The training run's YAML schema (ACE's train config)."""

import dataclasses
from pathlib import Path
from typing import Any

from fme.ace.data.loader import DataLoaderConfig
from fme.ace.inference.inline import (
    InlineInferenceConfig,
    check_weighted_epochs,
    metric_prefixes,
)
from fme.ace.stepper.stepper import StepperConfig
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.ace.train.phases import PhaseConfig, ResolvedPhase, resolve_phases
from fme.core.config_loading import apply_overrides, from_dict_strict, load_yaml
from fme.core.distributed import DEFAULT_COLLECTIVE_TIMEOUT_SECONDS
from fme.core.ema import EMAConfig
from fme.core.metrics_logger import LoggingConfig
from fme.core.number_check import check_number
from fme.core.optimization import OptimizationConfig

_BACKENDS = (None, "gloo", "nccl")


@dataclasses.dataclass
class ValidationConfig:
    """ACE's ``validation`` section.

    Attributes:
        loader: the validation data loader (not shuffled).
    """

    loader: DataLoaderConfig


@dataclasses.dataclass
class TrainConfig:
    """A training run.

    Attributes:
        experiment_dir: where checkpoints, metrics, logs and plots go.
        train_loader: training data.
        stepper: the model.
        optimization: optimiser, learning rate and its schedule.
        stepper_training: losses and rollout settings.
        max_epochs: number of epochs; with ``phases``, the length of each
            phase that sets neither ``max_epochs`` nor ``max_steps``.
        validation: validation data, evaluated after every epoch.
        seed: seeds weights, data order and noise.
        save_checkpoint: write checkpoints.
        logging: where metrics and messages go.
        max_steps: stop after this many optimiser steps (resumable later); with
            ``phases`` counted over the whole run.
        checkpoint_every_n_steps: also checkpoint mid-epoch this often.
        best_checkpoint_metric: validation metric choosing ``best_ckpt.tar``;
            ``val/mean/main_loss`` ignores regularisation terms and weights.
        distributed_backend: ``gloo`` or ``nccl``; None picks ``nccl`` with
            CUDA, ``gloo`` otherwise.
        distributed_timeout_seconds: how long a collective (gradient
            all-reduce, metric reduction, barrier) waits for every rank
            before the job fails naming the rank that stopped responding.
        inference: rollouts scored at the end of epochs, one block or a list
            as in ACE (``inference/...`` metrics for one block,
            ``inference_<i>/...`` or ``<name>/...`` for several; usable as
            ``best_checkpoint_metric``). As in ACE, blocks with ``weight > 0``
            (the default) select ``best_inference_ckpt.tar`` by their
            weighted ``time_mean_norm/rmse/channel_mean``.
        phases: train in phases, in order, each with its own length,
            optimisation, rollout length, loss-weight schedules, freezing and
            LoRA (see ``fme.ace.train.phases``); null trains one phase of
            ``max_epochs`` with the top-level settings.
        ema: keep an exponential moving average of the weights (ACE's
            ``ema: {decay, faster_decay_at_start, resume_ema_ckpt_path}``),
            saved in every checkpoint. Unlike ACE, no average is kept without
            this section (or ``validate_using_ema``).
        validate_using_ema: validate, run inline inference and choose
            ``best_ckpt.tar`` with the averaged weights (which ``best_ckpt.tar``
            then holds); without ``ema`` it uses ACE's default ``ema``.
        plot_training: at the end of the run, plot the loss-term and
            loss-weight curves of ``metrics.jsonl`` into
            ``experiment_dir/plots`` (and to wandb when it logs); false skips
            it (and the import of matplotlib), which saves about a second
            of every short run. Not an ACE key.
    """

    experiment_dir: str
    train_loader: DataLoaderConfig
    stepper: StepperConfig
    optimization: OptimizationConfig
    stepper_training: TrainStepperConfig = dataclasses.field(
        default_factory=TrainStepperConfig
    )
    max_epochs: int = 1
    validation: ValidationConfig | None = None
    seed: int = 0
    save_checkpoint: bool = True
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    max_steps: int | None = None
    checkpoint_every_n_steps: int | None = None
    best_checkpoint_metric: str = "val/mean/loss"
    distributed_backend: str | None = None
    distributed_timeout_seconds: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS
    inference: InlineInferenceConfig | list[InlineInferenceConfig] | None = None
    phases: list[PhaseConfig] | None = None
    ema: EMAConfig | None = None
    validate_using_ema: bool = False
    plot_training: bool = True

    def __post_init__(self):
        if self.ema_config is not None:
            lora_phases = [
                p for p in (self.phases or []) if getattr(p, "lora", None) is not None
            ]
            if self.stepper_training.lora is not None or lora_phases:
                raise ValueError(
                    "not supported here: ema (or validate_using_ema) together with "
                    "lora; remove one of them"
                )
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        self.resolved_phases()  # inheritance errors surface at load
        for name in ("max_steps", "checkpoint_every_n_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        check_number(
            self.distributed_timeout_seconds,
            path="distributed_timeout_seconds",
            minimum=0.0,
            exclusive=True,
        )
        if self.distributed_backend not in _BACKENDS:
            raise ValueError(
                f"distributed_backend {self.distributed_backend!r} is unknown; "
                "allowed: null (automatic), gloo, nccl"
            )
        check_weighted_epochs(self.inference, self.max_epochs)
        prefixes = metric_prefixes(self.inference)
        if isinstance(self.inference, list) and len(set(prefixes)) != len(prefixes):
            raise ValueError(
                f"inference block names {prefixes} must be unique; set name: on each"
            )
        metric_prefix = self.best_checkpoint_metric.split("/", 1)[0]
        if metric_prefix.startswith("inference") and metric_prefix not in prefixes:
            raise ValueError(
                f"best_checkpoint_metric {self.best_checkpoint_metric!r} needs an "
                f"inference block named {metric_prefix!r} (configured: {prefixes}); "
                "add one or use val/mean/loss"
            )
        if metric_prefix != "val" and metric_prefix not in prefixes:
            raise ValueError(
                f"best_checkpoint_metric {self.best_checkpoint_metric!r} must be a "
                "validation or inference metric, e.g. val/mean/loss or "
                "val/mean/main_loss"
            )

    @property
    def ema_config(self) -> EMAConfig | None:
        """The EMA to keep: ``ema``, or ACE's default if only ``validate_using_ema``."""
        if self.ema is None and self.validate_using_ema:
            return EMAConfig()
        return self.ema

    def resolved_phases(self) -> list[ResolvedPhase]:
        """The phases to train, with inherited settings filled in."""
        return resolve_phases(
            phases=self.phases,
            optimization=self.optimization,
            stepper_training=self.stepper_training,
            max_epochs=self.max_epochs,
        )

    @property
    def checkpoint_dir(self) -> Path:
        """``experiment_dir/training_checkpoints``."""
        return Path(self.experiment_dir) / "training_checkpoints"


def load_train_config(
    path: str | Path, overrides: list[str] | None = None
) -> TrainConfig:
    """Read and strictly validate a training YAML, applying ``a.b=value`` overrides."""
    data: dict[str, Any] = apply_overrides(load_yaml(path), overrides or [])
    return from_dict_strict(TrainConfig, data, path="config")
