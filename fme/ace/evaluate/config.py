"""The evaluation run's YAML schema (ACE's evaluator config)."""

import dataclasses

from fme.ace.inference.data import InferenceDataLoaderConfig
from fme.core.metrics_logger import LoggingConfig


@dataclasses.dataclass
class DataWriterConfig:
    """ACE's ``data_writer``.

    Attributes:
        save_prediction_files: write ``autoregressive_predictions.nc`` and
            ``autoregressive_target.nc``.
    """

    save_prediction_files: bool = True


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
        training_metrics_path: a training ``metrics.jsonl`` to plot curves
            from; by default the one next to the checkpoint's directory.
    """

    experiment_dir: str
    checkpoint_path: str
    loader: InferenceDataLoaderConfig
    n_forward_steps: int = 20
    forward_steps_in_memory: int = 10
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    data_writer: DataWriterConfig = dataclasses.field(default_factory=DataWriterConfig)
    training_metrics_path: str | None = None

    def __post_init__(self):
        for name in ("n_forward_steps", "forward_steps_in_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
