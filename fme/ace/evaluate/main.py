"""Evaluate a checkpoint: rollouts, netCDF output, metrics and plots."""

import argparse
import json
import logging
import sys
from pathlib import Path

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluation import plots
from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.evaluation.writer import PredictionWriter
from fme.ace.inference.data import InferenceData
from fme.ace.inference.rollout import RolloutChunk, run_rollout
from fme.ace.stepper.stepper import Stepper
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import (
    ConfigError,
    apply_overrides,
    from_dict_strict,
    load_yaml,
)
from fme.core.distributed import DistributedContext
from fme.core.metrics_logger import MetricsLogger


def load_stepper(checkpoint_path: str | Path) -> Stepper:
    """The stepper stored in a training checkpoint."""
    state = load_checkpoint(checkpoint_path)
    return Stepper.from_state(state["trainable"]["stepper"])


def _training_metrics_path(config: EvaluatorConfig) -> Path:
    if config.training_metrics_path is not None:
        return Path(config.training_metrics_path)
    return Path(config.checkpoint_path).resolve().parent.parent / "metrics.jsonl"


def run_evaluation(config: EvaluatorConfig) -> dict[str, float]:
    """Run the evaluation on one process; returns the summary metrics."""
    dist = DistributedContext.single_process()
    experiment_dir = Path(config.experiment_dir)
    config.logging.configure_python_logging(experiment_dir, dist)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    stepper = load_stepper(config.checkpoint_path).to(dist.device)
    stepper.module.eval()
    data = InferenceData(
        config.loader.dataset,
        start_indices=config.loader.start_indices,
        names=stepper.all_names,
        n_forward_steps=config.n_forward_steps,
    )
    info = data.dataset_info
    conserved = conserved_quantities(stepper)
    aggregator = RolloutMetricsAggregator(
        gridded_operations=info.gridded_operations,
        names=stepper.out_names,
        conserved_names=conserved.names,
        derived_quantities=conserved.derived,
        n_lead_times=config.n_forward_steps,
    )
    writer = None
    if config.data_writer.save_prediction_files:
        writer = PredictionWriter(
            experiment_dir=experiment_dir,
            names=stepper.out_names,
            lat=info.lat,
            lon=info.lon,
            n_samples=data.n_samples,
            n_leads=config.n_forward_steps,
            timestep=info.timestep,
            variable_metadata=info.variable_metadata,
        )
    last: list[RolloutChunk] = []

    def on_chunk(chunk: RolloutChunk) -> None:
        aggregator.record(
            lead_start=chunk.lead_start,
            prediction=chunk.prediction,
            target={n: chunk.data[n] for n in stepper.out_names},
            initial_condition=chunk.initial_condition,
            corrections=chunk.corrections,
        )
        if writer is not None:
            if chunk.lead_start == 1:
                writer.set_init_times(0, data.initial_times)
            writer.append(
                sample_start=0,
                lead_start=chunk.lead_start,
                prediction=chunk.prediction,
                target={n: chunk.data[n] for n in stepper.out_names},
            )
        last[:] = [chunk]

    run_rollout(
        stepper=stepper,
        data=data,
        n_forward_steps=config.n_forward_steps,
        forward_steps_in_memory=config.forward_steps_in_memory,
        on_chunk=on_chunk,
        device=dist.device,
    )
    if writer is not None:
        writer.close()
    metrics = aggregator.get_metrics()
    (experiment_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    image_paths = _make_plots(config, aggregator, last[0], stepper, experiment_dir)
    logger = MetricsLogger(
        config=config.logging, experiment_dir=experiment_dir, dist=dist
    )
    logger.log(
        {f"inference/{k}": v for k, v in metrics.items() if "/lead_" not in k},
        optimizer_step=0,
        epoch=0,
    )
    logger.log_images(plots.image_paths_for_wandb(image_paths), optimizer_step=0)
    logger.finish()
    logging.info("evaluation metrics in %s", experiment_dir / "metrics.json")
    if writer is not None:
        logging.info("predictions and targets in %s", experiment_dir)
    logging.info("plots in %s", experiment_dir / "plots")
    print(f"plots written to {experiment_dir / 'plots'}")
    return metrics


def _make_plots(
    config: EvaluatorConfig,
    aggregator: RolloutMetricsAggregator,
    last_chunk: RolloutChunk,
    stepper: Stepper,
    experiment_dir: Path,
) -> list[Path]:
    plot_dir = experiment_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    info = stepper.dataset_info
    hours = info.timestep.total_seconds() / 3600
    curves = aggregator.get_curves()
    paths = [plots.plot_rmse_vs_lead(curves, hours, plot_dir / "rmse_vs_lead.png")]
    if aggregator.conserved_names:
        paths.append(
            plots.plot_global_mean_drift(
                curves, hours, plot_dir / "global_mean_drift.png"
            )
        )
    metrics_path = _training_metrics_path(config)
    if metrics_path.is_file():
        paths.extend(plots.plot_training_curves(metrics_path, plot_dir))
    name = stepper.out_names[0]
    prediction = last_chunk.prediction[name][0, -1].cpu().numpy()
    target = last_chunk.data[name][0, -1].cpu().numpy()
    paths.append(
        plots.plot_field_map(
            prediction,
            target,
            info.lat.numpy(),
            info.lon.numpy(),
            name,
            plot_dir / f"map_{name}.png",
        )
    )
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.evaluate CONFIG.yaml [--override key=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m fme.ace.evaluate")
    parser.add_argument("config", help="evaluator YAML")
    parser.add_argument("--override", nargs="*", default=[])
    args = parser.parse_args(argv)
    try:
        data = apply_overrides(load_yaml(args.config), args.override)
        config = from_dict_strict(EvaluatorConfig, data, path="config")
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    run_evaluation(config)
