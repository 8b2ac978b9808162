"""Inline inference during training (ACE's ``inference`` section, one block or a list)."""

import dataclasses

from fme.ace.data.time_subset import Slice
from fme.ace.evaluation.aggregator_config import InferenceEvaluatorAggregatorConfig
from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.evaluation.rollout_evaluation import RolloutEvaluation
from fme.ace.evaluation.time_mean import read_reference_maps
from fme.ace.inference.data import InferenceData, InferenceDataLoaderConfig
from fme.ace.stepper.stepper import Stepper
from fme.core.distributed import DistributedContext

# metric families of the map diagnostics (time mean, histogram, spectrum,
# seasonal and annual means), as their get_metrics name them
DIAGNOSTIC_FAMILIES = (
    "mean_norm",
    "time_mean",
    "time_mean_norm",
    "time_mean_ref",
    "histogram",
    "power_spectrum",
    "seasonal",
    "annual",
)


@dataclasses.dataclass
class InlineInferenceConfig:
    """A rollout scored at the end of chosen epochs.

    Attributes:
        loader: data and initial conditions.
        n_forward_steps: rollout length.
        forward_steps_in_memory: lead times held in memory at once.
        n_ensemble_per_ic: only 1.
        epochs: ACE's positional slice over epochs 1..max_epochs (index 0 is
            epoch 1); by default every epoch. Negative indices are not
            supported here.
        aggregator: the diagnostics to compute (ACE's evaluator aggregator).
        name: metric prefix; by default ``inference`` for a single block and
            ``inference_<i>`` for a list, as in ACE.
        weight: this block's weight in ACE's inference error, the sum over
            blocks with ``weight > 0`` of ``weight *
            time_mean_norm/rmse/channel_mean``, logged as ``inference_error``;
            its lowest value selects ``best_inference_ckpt.tar`` (as in ACE).
            ``weight: 0`` leaves the block out.
        every_n_epochs: also require the epoch to be divisible by this.
    """

    loader: InferenceDataLoaderConfig
    n_forward_steps: int = 4
    forward_steps_in_memory: int = 4
    n_ensemble_per_ic: int = 1
    epochs: Slice = dataclasses.field(default_factory=Slice)
    aggregator: InferenceEvaluatorAggregatorConfig = dataclasses.field(
        default_factory=InferenceEvaluatorAggregatorConfig
    )
    name: str | None = None
    weight: float = 1.0
    every_n_epochs: int = 1

    def __post_init__(self):
        for name in ("n_forward_steps", "forward_steps_in_memory", "every_n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"inference.{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.n_ensemble_per_ic != 1:
            raise ValueError("not supported here: inference.n_ensemble_per_ic != 1")
        if self.weight < 0:
            raise ValueError(f"inference.weight must be >= 0, got {self.weight}")
        if self.weight > 0 and not self.aggregator.time_mean_norm.enabled:
            raise ValueError(
                "inference.aggregator.time_mean_norm must be enabled when "
                f"inference.weight > 0 (got {self.weight}): best_inference_ckpt.tar "
                "is selected with time_mean_norm/rmse/channel_mean. Enable it or "
                "set weight: 0"
            )
        for key in ("start", "stop"):
            value = getattr(self.epochs, key)
            if value is not None and value < 0:
                raise ValueError(
                    f"not supported here: negative inference.epochs.{key} ({value})"
                )

    def epoch_set(self, max_epochs: int) -> set[int]:
        """The epochs in ``1..max_epochs`` after which this block runs."""
        return {e for e in range(1, max_epochs + 1) if self.runs_after(e)}

    def runs_after(self, epoch: int) -> bool:
        """Whether to run after ``epoch`` (1-based)."""
        index = epoch - 1
        start = self.epochs.start or 0
        if index < start or (
            self.epochs.stop is not None and index >= self.epochs.stop
        ):
            return False
        if (index - start) % (self.epochs.step or 1) != 0:
            return False
        return epoch % self.every_n_epochs == 0


INFERENCE_ERROR = "inference_error"
"""The weighted inference error ACE selects ``best_inference_ckpt.tar`` with."""


def check_weighted_epochs(
    config: InlineInferenceConfig | list[InlineInferenceConfig] | None,
    max_epochs: int,
) -> None:
    """Refuse weighted blocks that run after different epochs (as ACE does).

    Their weighted sum would compare different blocks from one epoch to the
    next.
    """
    blocks = [] if config is None else config if isinstance(config, list) else [config]
    sets = [b.epoch_set(max_epochs) for b in blocks if b.weight > 0]
    if any(s != sets[0] for s in sets[1:]):
        raise ValueError(
            "inference blocks with weight > 0 must run after the same epochs, so "
            "that the weighted inference error selecting best_inference_ckpt.tar "
            "is comparable across epochs; give them the same epochs / "
            "every_n_epochs or set weight: 0 on supplementary blocks"
        )


def metric_prefixes(
    config: InlineInferenceConfig | list[InlineInferenceConfig] | None,
) -> list[str]:
    """The metric prefix of each inline-inference block, as in ACE."""
    if config is None:
        return []
    blocks = config if isinstance(config, list) else [config]
    if len(blocks) == 1:
        return [blocks[0].name or "inference"]
    return [b.name or f"inference_{i}" for i, b in enumerate(blocks)]


class _Block:
    def __init__(
        self,
        config: InlineInferenceConfig,
        *,
        prefix: str,
        stepper: Stepper,
        dist: DistributedContext,
    ):
        self.config = config
        self.prefix = prefix
        self.stepper = stepper
        self.dist = dist
        self.data = InferenceData(
            config.loader.dataset,
            start_indices=config.loader.start_indices,
            names=stepper.all_names,
            n_forward_steps=config.n_forward_steps,
            rank=dist.rank,
            world_size=dist.world_size,
            num_data_workers=config.loader.num_data_workers,
        )
        reference = config.aggregator.reference_path
        if reference is not None:  # a bad reference file fails before training
            info = stepper.dataset_info
            read_reference_maps(
                reference, names=stepper.out_names, img_shape=info.img_shape
            )

    def metric_names(self) -> list[str]:
        """``<prefix>/<metric>/<var>`` skill summaries a run of this block logs."""
        info = self.data.dataset_info
        conserved = conserved_quantities(self.stepper)
        aggregator = RolloutMetricsAggregator(
            gridded_operations=info.gridded_operations,
            names=self.stepper.out_names,
            conserved_names=conserved.names,
            derived_quantities=conserved.derived,
            n_lead_times=self.config.n_forward_steps,
        )
        return sorted(f"{self.prefix}/{k}" for k in aggregator.get_curves())

    def may_log_diagnostic(self, metric: str) -> bool:
        """Whether ``metric`` can be one of this block's map-diagnostic metrics.

        Their names depend on the data a rollout covers (e.g. the seasons), so
        only the family is checked before training; they are computed on
        single-process runs only.
        """
        parts = metric.split("/")
        return (
            self.dist.world_size == 1
            and len(parts) >= 3
            and parts[0] == self.prefix
            and parts[1] in DIAGNOSTIC_FAMILIES
        )

    def __call__(self, epoch: int) -> dict[str, float]:
        if not self.config.runs_after(epoch):
            return {}
        evaluation = RolloutEvaluation(
            stepper=self.stepper,
            data=self.data,
            n_forward_steps=self.config.n_forward_steps,
            aggregator_config=self.config.aggregator,
            device=self.dist.device,
        )
        evaluation.run(self.config.forward_steps_in_memory)
        metrics = evaluation.aggregator.reduced(self.dist.reduce_sum).get_metrics()
        if self.dist.world_size == 1:
            metrics.update(evaluation.diagnostics.get_metrics())
        else:  # the checkpoint-selection score is summed over every rank's rollouts
            time_mean_norm = evaluation.diagnostics.time_mean_norm
            if time_mean_norm is not None:
                time_mean_norm.reduce(self.dist.reduce_sum)
                metrics.update(time_mean_norm.get_metrics())
        return {
            f"{self.prefix}/{k}": v for k, v in metrics.items() if "/lead_" not in k
        }

    def weighted_error(self, metrics: dict[str, float]) -> float | None:
        """``weight * time_mean_norm/rmse/channel_mean`` of a run, or None."""
        if self.config.weight == 0 or not metrics:
            return None
        key = f"{self.prefix}/time_mean_norm/rmse/channel_mean"
        if key not in metrics:
            raise RuntimeError(
                f"inference block {self.prefix!r} with weight {self.config.weight} "
                f"logged no {key}, which best_inference_ckpt.tar is selected with"
            )
        return self.config.weight * metrics[key]


class InlineInference:
    """Runs the configured rollouts and returns their prefixed metrics.

    Args:
        config: one inference block or a list of them.
        stepper: the model being trained.
        dist: rollouts are split across ranks and skill metrics summed over
            them (the map diagnostics are computed on single-process runs).
    """

    def __init__(
        self,
        config: InlineInferenceConfig | list[InlineInferenceConfig],
        *,
        stepper: Stepper,
        dist: DistributedContext,
    ):
        blocks = config if isinstance(config, list) else [config]
        self._blocks = [
            _Block(block, prefix=prefix, stepper=stepper, dist=dist)
            for block, prefix in zip(blocks, metric_prefixes(config), strict=True)
        ]

    def metric_names(self) -> list[str]:
        """The skill-summary names every run of the blocks logs, prefixed."""
        return sorted(n for block in self._blocks for n in block.metric_names())

    def may_log_diagnostic(self, metric: str) -> bool:
        """Whether ``metric`` names a map-diagnostic family of some block."""
        return any(block.may_log_diagnostic(metric) for block in self._blocks)

    @property
    def selects_checkpoint(self) -> bool:
        """Whether some block has ``weight > 0`` (``best_inference_ckpt.tar``)."""
        return any(block.config.weight > 0 for block in self._blocks)

    def __call__(self, epoch: int) -> dict[str, float]:
        """Metrics of the rollouts after ``epoch`` (empty on skipped epochs).

        With weighted blocks among them, also ``inference_error``.
        """
        metrics: dict[str, float] = {}
        errors = []
        for block in self._blocks:
            block_metrics = block(epoch)
            metrics.update(block_metrics)
            error = block.weighted_error(block_metrics)
            if error is not None:
                errors.append(error)
        if errors:
            metrics[INFERENCE_ERROR] = float(sum(errors))
        return metrics
