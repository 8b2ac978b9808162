"""The evaluation run's YAML schema (ACE's evaluator config)."""

import dataclasses

from fme.ace.evaluation.aggregator_config import InferenceEvaluatorAggregatorConfig
from fme.ace.inference.data import InferenceDataLoaderConfig
from fme.ace.inference.data_writer import DataWriterConfig
from fme.core.metrics_logger import LoggingConfig

__all__ = ["DataWriterConfig", "EvaluatorConfig"]


@dataclasses.dataclass
class EvaluatorConfig:
    """An evaluation of a trained checkpoint on long rollouts.

    Attributes:
        experiment_dir: where netCDF files, ``metrics.json`` and plots go.
        checkpoint_path: a training checkpoint (config and normalisation come
            from it).
        loader: data and initial conditions.
        n_forward_steps: rollout length.
        forward_steps_in_memory: lead times held in memory at once.
        logging: where messages and metrics go.
        data_writer: which files to write.
        aggregator: which diagnostics to compute (ACE's evaluator aggregator).
        training_metrics_path: a training ``metrics.jsonl`` to plot curves
            from; by default the one next to the checkpoint's directory.
        prediction_loader: not supported here (must be null).
        stepper_override: not supported here (must be null).
        use_ema_if_available: evaluate with the checkpoint's EMA weights when
            it has them (as in ACE: only checkpoints saved with their
            optimisation state, e.g. ``ckpt.tar``, carry them).
        allow_incompatible_dataset: not supported here (must be false).
        validation: not supported here (must be null).
        n_ensemble_per_ic: only 1.
        seed: seeds the model's noise (a stream of its own, carried through
            the rollout, as in ACE), so a stochastic network's predictions
            are reproducible.
    """

    experiment_dir: str
    checkpoint_path: str
    loader: InferenceDataLoaderConfig
    n_forward_steps: int = 20
    forward_steps_in_memory: int = 10
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    data_writer: DataWriterConfig = dataclasses.field(default_factory=DataWriterConfig)
    aggregator: InferenceEvaluatorAggregatorConfig = dataclasses.field(
        default_factory=InferenceEvaluatorAggregatorConfig
    )
    training_metrics_path: str | None = None
    prediction_loader: dict | None = None
    stepper_override: dict | None = None
    use_ema_if_available: bool = True
    allow_incompatible_dataset: bool = False
    validation: dict | None = None
    n_ensemble_per_ic: int = 1
    seed: int | None = None

    def __post_init__(self):
        for name in ("n_forward_steps", "forward_steps_in_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prediction_loader", "stepper_override", "validation"):
            if getattr(self, name) is not None:
                raise ValueError(f"not supported here: {name}")
        if self.allow_incompatible_dataset:
            raise ValueError("not supported here: allow_incompatible_dataset: true")
        if self.n_ensemble_per_ic != 1:
            raise ValueError(
                f"not supported here: n_ensemble_per_ic={self.n_ensemble_per_ic}; "
                "only 1"
            )
