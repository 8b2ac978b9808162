"""Forecast-only inference: ``python -m fme.ace.inference CONFIG.yaml``.

Rolls a checkpoint forward from initial conditions with forcing data (no
target), ``forward_steps_in_memory`` steps at a time, and writes ACE's files
into ``experiment_dir``: ``initial_condition.nc``,
``autoregressive_predictions.nc``, ``monthly_mean_predictions.nc``,
``restart.nc`` (the last state; pointing ``initial_condition.path`` at it
continues the run), ``time_mean_diagnostics.nc`` and ``metrics.json``.
"""

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fme.ace.evaluate.main import load_stepper
from fme.ace.evaluation.cli import config_from_command_line
from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.diagnostics import RolloutDiagnostics
from fme.ace.evaluation.metrics import DerivedQuantity
from fme.ace.inference.config import InferenceConfig
from fme.ace.inference.data import InferenceData
from fme.ace.inference.data_writer import RolloutWriters
from fme.ace.inference.initial_condition import (
    INITIAL_CONDITION_FILENAME,
    RESTART_FILENAME,
    InitialCondition,
    read_initial_condition,
    write_state_file,
)
from fme.ace.inference.rollout import RolloutChunk, run_rollout
from fme.ace.stepper.stepper import Stepper
from fme.core.distributed import DistributedContext
from fme.core.metrics_logger import MetricsLogger


class _InitialTimes:
    """Start indices at the initial condition's times on the forcing's time axis."""

    def __init__(self, times: np.ndarray, description: str):
        self._times = np.asarray(times).astype("datetime64[ns]")
        self._description = description

    def as_indices(self, axis: np.ndarray) -> list[int]:
        positions = {t: i for i, t in enumerate(axis.astype("datetime64[ns]"))}
        missing = [str(t) for t in self._times if t not in positions]
        if missing:
            raise ValueError(
                f"initial times {missing} are not times of the forcing data "
                f"({self._description}: {len(axis)} times, {axis[0]} .. "
                f"{axis[-1]}); the forcing must cover every initial time"
            )
        return [positions[t] for t in self._times]


def _variable(name: str) -> DerivedQuantity:
    def field(data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return data[name].double()

    return field


class _DriftTracker:
    """Global-mean drift of the conserved quantities from the initial state."""

    def __init__(self, stepper: Stepper, initial: InitialCondition):
        conserved = conserved_quantities(stepper)
        self._ops = stepper.dataset_info.gridded_operations
        self._functions: dict[str, DerivedQuantity] = {
            n: _variable(n) for n in conserved.names
        }
        self._functions.update(conserved.derived)
        self._initial = {
            name: self._ops.area_weighted_mean(fn(initial.state)).mean()
            for name, fn in self._functions.items()
        }
        self.last: dict[str, float] = {}

    def record(self, chunk: RolloutChunk) -> None:
        last = {n: v[:, -1] for n, v in chunk.prediction.items()}
        for name, fn in self._functions.items():
            mean = self._ops.area_weighted_mean(fn(last)).mean()
            self.last[f"global_mean_drift/{name}"] = float(mean - self._initial[name])


def run_inference(config: InferenceConfig) -> dict[str, float]:
    """Run forecast-only inference on one process; returns its metrics."""
    dist = DistributedContext.single_process()
    experiment_dir = Path(config.experiment_dir)
    config.logging.configure_python_logging(experiment_dir, dist)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    stepper = load_stepper(
        config.checkpoint_path, use_ema=config.use_ema_if_available
    ).to(dist.device)
    stepper.module.eval()
    info = stepper.dataset_info
    initial = read_initial_condition(
        config.initial_condition,
        names=stepper.prognostic_names,
        img_shape=info.img_shape,
    )
    forcing_names = stepper.forcing_names
    data = _forcing_data(config, initial, forcing_names)
    writers = RolloutWriters(
        config=config.data_writer,
        experiment_dir=experiment_dir,
        out_names=stepper.out_names,
        lat=info.lat,
        lon=info.lon,
        init_times=initial.times,
        n_forward_steps=config.n_forward_steps,
        timestep=info.timestep,
        variable_metadata=info.variable_metadata,
        with_target=False,
    )
    diagnostics = RolloutDiagnostics(
        config=config.aggregator,
        names=stepper.out_names,
        ops=info.gridded_operations,
        lat=info.lat,
        n_lon=info.lon.numel(),
        n_forward_steps=config.n_forward_steps,
        timestep=info.timestep,
        metadata=info.variable_metadata,
    )
    write_state_file(
        experiment_dir / INITIAL_CONDITION_FILENAME,
        state=initial.state,
        times=initial.times,
        lat=info.lat,
        lon=info.lon,
        variable_metadata=info.variable_metadata,
        kind="initial condition",
    )
    drift = _DriftTracker(stepper, initial)
    series: dict[str, list[float]] = {}
    last_times: list[np.ndarray] = []
    ops = info.gridded_operations

    def on_chunk(chunk: RolloutChunk) -> None:
        writers.append(chunk)
        diagnostics.record(chunk)
        drift.record(chunk)
        if config.aggregator.log_global_mean_time_series:
            for name, values in chunk.prediction.items():
                means = ops.area_weighted_mean(values.double()).mean(dim=0)
                series.setdefault(name, []).extend(means.tolist())
        last_times[:] = [chunk.time[:, -1]]
        logging.info(
            "inference: steps %d..%d of %d done",
            chunk.lead_start,
            chunk.lead_start + chunk.n_leads - 1,
            config.n_forward_steps,
        )

    end = run_rollout(
        stepper=stepper,
        data=data,
        n_forward_steps=config.n_forward_steps,
        forward_steps_in_memory=config.forward_steps_in_memory,
        on_chunk=on_chunk,
        device=dist.device,
        initial_state=initial.state,
        corrector_state=initial.corrector_state,
    )
    writers.close()
    write_state_file(
        experiment_dir / RESTART_FILENAME,
        state=end.state,
        times=last_times[0],
        lat=info.lat,
        lon=info.lon,
        variable_metadata=info.variable_metadata,
        kind="restart",
        corrector_state=end.corrector_state,
    )
    diagnostics.write(experiment_dir)
    metrics = {**drift.last, **diagnostics.get_metrics()}
    (experiment_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if series:
        (experiment_dir / "global_mean_series.json").write_text(json.dumps(series))
    logger = MetricsLogger(
        config=config.logging, experiment_dir=experiment_dir, dist=dist
    )
    logger.log(
        {f"inference/{k}": v for k, v in metrics.items()}, optimizer_step=0, epoch=0
    )
    logger.finish()
    logging.info("inference output in %s", experiment_dir)
    print(f"inference output written to {experiment_dir}")
    return metrics


def _forcing_data(
    config: InferenceConfig, initial: InitialCondition, forcing_names: list[str]
) -> InferenceData:
    """Forcing windows starting at the initial times."""
    if not forcing_names:
        raise ValueError(
            "the checkpoint's model takes no forcing variables; forecast-only "
            "inference here needs at least one (for the time axis)"
        )
    dataset_config = config.forcing_loader.dataset
    description = getattr(dataset_config, "description", "the forcing data")
    return InferenceData(
        dataset_config,
        start_indices=_InitialTimes(initial.times, description),
        names=forcing_names,
        n_forward_steps=config.n_forward_steps,
        num_data_workers=config.forcing_loader.num_data_workers,
    )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.inference CONFIG.yaml [--override key=value ...]``."""
    config = config_from_command_line(
        argv,
        prog="python -m fme.ace.inference",
        what="inference",
        config_type=InferenceConfig,
    )
    run_inference(config)
