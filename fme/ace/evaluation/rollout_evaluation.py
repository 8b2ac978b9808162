"""Everything recorded about one scored rollout: metrics, diagnostics, files.

Used by the evaluator entry point and inline inference; the per-chunk logic
lives here, not in the entry points.
"""

import datetime
import json
from pathlib import Path

import torch

from fme.ace.evaluation.aggregator_config import InferenceEvaluatorAggregatorConfig
from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.diagnostics import RolloutDiagnostics, write_mean_diagnostics
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.inference.data import InferenceData
from fme.ace.inference.data_writer import DataWriterConfig, RolloutWriters
from fme.ace.inference.rollout import RolloutChunk, run_rollout
from fme.ace.stepper.stepper import Stepper

METRICS_FILENAME = "metrics.json"
MEAN_DIAGNOSTICS_FILENAME = "mean_diagnostics.nc"


class RolloutEvaluation:
    """Scores a rollout against its data, chunk by chunk.

    Args:
        stepper: the model.
        data: initial conditions and target windows.
        n_forward_steps: rollout length.
        aggregator_config: which extra diagnostics to compute.
        device: where the model and the sums live.
        writer_config: which files to write, or None to write none.
        experiment_dir: where files go (needed with ``writer_config``).
    """

    def __init__(
        self,
        *,
        stepper: Stepper,
        data: InferenceData,
        n_forward_steps: int,
        aggregator_config: InferenceEvaluatorAggregatorConfig,
        device: torch.device | str = "cpu",
        writer_config: DataWriterConfig | None = None,
        experiment_dir: Path | None = None,
    ):
        self._stepper = stepper
        self._data = data
        self._n_forward_steps = n_forward_steps
        self._device = device
        info = data.dataset_info
        self.timestep: datetime.timedelta = info.timestep
        conserved = conserved_quantities(stepper)
        self.aggregator = RolloutMetricsAggregator(
            gridded_operations=info.gridded_operations,
            names=stepper.out_names,
            conserved_names=conserved.names,
            derived_quantities=conserved.derived,
            n_lead_times=n_forward_steps,
            device=device,
        )
        self.diagnostics = RolloutDiagnostics(
            config=aggregator_config,
            names=stepper.out_names,
            ops=info.gridded_operations,
            lat=info.lat,
            n_lon=info.lon.numel(),
            n_forward_steps=n_forward_steps,
            timestep=info.timestep,
            metadata=info.variable_metadata,
            normalize=stepper.normalizer.normalize,
        )
        self._writers: RolloutWriters | None = None
        if writer_config is not None:
            assert experiment_dir is not None
            self._writers = RolloutWriters(
                config=writer_config,
                experiment_dir=experiment_dir,
                out_names=stepper.out_names,
                lat=info.lat,
                lon=info.lon,
                init_times=data.initial_times,
                n_forward_steps=n_forward_steps,
                timestep=info.timestep,
                variable_metadata=info.variable_metadata,
                with_target=True,
            )
        self.last_chunk: RolloutChunk | None = None

    def _record(self, chunk: RolloutChunk) -> None:
        names = self._stepper.out_names
        self.aggregator.record(
            lead_start=chunk.lead_start,
            prediction=chunk.prediction,
            target={n: chunk.data[n] for n in names},
            initial_condition=chunk.initial_condition,
            corrections=chunk.corrections,
        )
        self.diagnostics.record(chunk)
        if self._writers is not None:
            self._writers.append(chunk)
        self.last_chunk = chunk

    def run(self, forward_steps_in_memory: int, noise_seed: int | None = None) -> None:
        """Roll out and record every chunk; close the files.

        Args:
            forward_steps_in_memory: steps per chunk.
            noise_seed: seeds the model's noise (see ``run_rollout``).
        """
        run_rollout(
            stepper=self._stepper,
            data=self._data,
            n_forward_steps=self._n_forward_steps,
            forward_steps_in_memory=forward_steps_in_memory,
            on_chunk=self._record,
            device=self._device,
            noise_seed=noise_seed,
        )
        if self._writers is not None:
            self._writers.close()

    def metrics(self) -> dict[str, float]:
        """Skill, drift and diagnostic metrics (this process's samples)."""
        return {**self.aggregator.get_metrics(), **self.diagnostics.get_metrics()}

    def write(self, experiment_dir: Path) -> dict[str, float]:
        """Write ``metrics.json`` and the ``*_diagnostics.nc`` files; return metrics."""
        metrics = self.metrics()
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / METRICS_FILENAME).write_text(json.dumps(metrics, indent=1))
        write_mean_diagnostics(
            self.aggregator,
            experiment_dir / MEAN_DIAGNOSTICS_FILENAME,
            timestep=self.timestep,
        )
        self.diagnostics.write(experiment_dir)
        return metrics
