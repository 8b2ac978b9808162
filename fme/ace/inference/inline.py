"""Inline inference during training (ACE's ``inference`` section)."""

import dataclasses

from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.inference.data import InferenceData, InferenceDataLoaderConfig
from fme.ace.inference.rollout import RolloutChunk, run_rollout
from fme.ace.stepper.stepper import Stepper
from fme.core.distributed import DistributedContext


@dataclasses.dataclass
class InlineInferenceConfig:
    """A short rollout scored after every ``every_n_epochs`` epochs.

    Attributes:
        loader: data and initial conditions.
        n_forward_steps: rollout length.
        forward_steps_in_memory: lead times held in memory at once.
        every_n_epochs: run after epochs divisible by this.
    """

    loader: InferenceDataLoaderConfig
    n_forward_steps: int = 4
    forward_steps_in_memory: int = 4
    every_n_epochs: int = 1

    def __post_init__(self):
        for name in ("n_forward_steps", "forward_steps_in_memory", "every_n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"inference.{name} must be >= 1, got {getattr(self, name)}"
                )


class InlineInference:
    """Runs the configured rollout and returns ``inference/...`` metrics.

    Args:
        config: the inference config.
        stepper: the model being trained.
        dist: rollouts are split across ranks and metrics summed over them.
    """

    def __init__(
        self,
        config: InlineInferenceConfig,
        *,
        stepper: Stepper,
        dist: DistributedContext,
    ):
        self.config = config
        self.stepper = stepper
        self.dist = dist
        self.data = InferenceData(
            config.loader.dataset,
            start_indices=config.loader.start_indices,
            names=stepper.all_names,
            n_forward_steps=config.n_forward_steps,
            rank=dist.rank,
            world_size=dist.world_size,
        )

    def __call__(self, epoch: int) -> dict[str, float]:
        """Metrics of the rollout after ``epoch`` (empty on skipped epochs)."""
        if epoch % self.config.every_n_epochs != 0:
            return {}
        conserved = conserved_quantities(self.stepper)
        aggregator = RolloutMetricsAggregator(
            gridded_operations=self.stepper.dataset_info.gridded_operations,
            names=self.stepper.out_names,
            conserved_names=conserved.names,
            derived_quantities=conserved.derived,
            n_lead_times=self.config.n_forward_steps,
            device=self.dist.device,
        )
        out_names = self.stepper.out_names

        def on_chunk(chunk: RolloutChunk) -> None:
            aggregator.record(
                lead_start=chunk.lead_start,
                prediction=chunk.prediction,
                target={n: chunk.data[n] for n in out_names},
                initial_condition=chunk.initial_condition,
                corrections=chunk.corrections,
            )

        run_rollout(
            stepper=self.stepper,
            data=self.data,
            n_forward_steps=self.config.n_forward_steps,
            forward_steps_in_memory=self.config.forward_steps_in_memory,
            on_chunk=on_chunk,
            device=self.dist.device,
        )
        metrics = aggregator.reduced(self.dist.reduce_sum).get_metrics()
        return {f"inference/{k}": v for k, v in metrics.items() if "/lead_" not in k}
