"""The forecast-only inference run's YAML schema (ACE's inference config)."""

import dataclasses

from fme.ace.evaluation.aggregator_config import InferenceAggregatorConfig
from fme.ace.inference.data import ForcingDataLoaderConfig
from fme.ace.inference.data_writer import DataWriterConfig
from fme.ace.inference.initial_condition import InitialConditionConfig
from fme.core.metrics_logger import LoggingConfig


@dataclasses.dataclass
class InferenceConfig:
    """A long rollout from initial conditions with forcing data and no target.

    Attributes:
        experiment_dir: where prediction files, ``restart.nc``, metrics and
            logs go.
        n_forward_steps: rollout length.
        checkpoint_path: a training checkpoint (config and normalisation come
            from it).
        logging: where messages and metrics go.
        initial_condition: the file of initial states (or a previous run's
            ``restart.nc`` to continue it).
        forcing_loader: the forcing data; its time axis must hold every
            initial time and the ``n_forward_steps`` after it.
        forward_steps_in_memory: steps held in memory at once (memory does not
            grow with ``n_forward_steps``).
        data_writer: which files to write.
        aggregator: metrics of the prediction alone (``log_global_mean_time_series``,
            ``time_mean_reference_data``).
        stepper_override: not supported here (must be null).
        use_ema_if_available: use EMA weights when the checkpoint has them
            (checkpoints of this project hold none).
        allow_incompatible_dataset: not supported here (must be false).
        labels: not supported here (must be null).
        n_ensemble_per_ic: only 1.
        seed: seeds any noise of the model.
    """

    experiment_dir: str
    n_forward_steps: int
    checkpoint_path: str
    initial_condition: InitialConditionConfig
    forcing_loader: ForcingDataLoaderConfig
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    forward_steps_in_memory: int = 10
    data_writer: DataWriterConfig = dataclasses.field(default_factory=DataWriterConfig)
    aggregator: InferenceAggregatorConfig = dataclasses.field(
        default_factory=InferenceAggregatorConfig
    )
    stepper_override: dict | None = None
    use_ema_if_available: bool = True
    allow_incompatible_dataset: bool = False
    labels: list[str] | None = None
    n_ensemble_per_ic: int = 1
    seed: int | None = None

    def __post_init__(self):
        for name in ("n_forward_steps", "forward_steps_in_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stepper_override is not None:
            raise ValueError("not supported here: stepper_override")
        if self.allow_incompatible_dataset:
            raise ValueError("not supported here: allow_incompatible_dataset: true")
        if self.labels is not None:
            raise ValueError("not supported here: labels")
        if self.n_ensemble_per_ic != 1:
            raise ValueError(
                f"not supported here: n_ensemble_per_ic={self.n_ensemble_per_ic}; "
                "only 1"
            )
