"""Evaluate a checkpoint: rollouts, netCDF output, metrics and plots."""

import logging
from pathlib import Path

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluation import plots
from fme.ace.evaluation.cli import config_from_command_line
from fme.ace.evaluation.conserved import conserved_quantities
from fme.ace.evaluation.headline import headline_table
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.evaluation.rollout_evaluation import RolloutEvaluation
from fme.ace.inference.data import InferenceData
from fme.ace.inference.rollout import RolloutChunk
from fme.ace.stepper.stepper import Stepper
from fme.core.checkpoint import load_checkpoint
from fme.core.distributed import DistributedContext
from fme.core.metrics_logger import MetricsLogger


def load_stepper(checkpoint_path: str | Path, *, use_ema: bool = False) -> Stepper:
    """The stepper stored in a training checkpoint (ours or ACE's).

    Args:
        checkpoint_path: the checkpoint file.
        use_ema: use the checkpoint's EMA weights if it has them (ACE's
            ``use_ema_if_available``).
    """
    state = load_checkpoint(checkpoint_path)
    stepper_state = state["trainable"]["stepper"]
    ema_params = (state.get("ema") or {}).get("params")
    if use_ema and ema_params is not None:
        logging.info("evaluating with the EMA weights of %s", checkpoint_path)
        module = {**stepper_state["module"], **ema_params}
        stepper_state = {**stepper_state, "module": module}
    return Stepper.from_state(stepper_state)


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
    stepper = load_stepper(
        config.checkpoint_path, use_ema=config.use_ema_if_available
    ).to(dist.device)
    stepper.module.eval()
    data = InferenceData(
        config.loader.dataset,
        start_indices=config.loader.start_indices,
        names=stepper.all_names,
        n_forward_steps=config.n_forward_steps,
        num_data_workers=config.loader.num_data_workers,
    )
    evaluation = RolloutEvaluation(
        stepper=stepper,
        data=data,
        n_forward_steps=config.n_forward_steps,
        aggregator_config=config.aggregator,
        device=dist.device,
        writer_config=config.data_writer,
        experiment_dir=experiment_dir,
    )
    evaluation.run(config.forward_steps_in_memory, noise_seed=config.seed)
    metrics = evaluation.write(experiment_dir)
    assert evaluation.last_chunk is not None
    image_paths = _make_plots(
        config, evaluation.aggregator, evaluation.last_chunk, stepper, experiment_dir
    )
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
    print(headline_table(metrics, evaluation.aggregator, evaluation.timestep))
    logging.info("evaluation metrics in %s", experiment_dir / "metrics.json")
    if config.data_writer.save_prediction_files:
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
    units = {
        name: meta["units"]
        for name, meta in info.variable_metadata.items()
        if "units" in meta
    }
    units.update(conserved_quantities(stepper).units)
    paths = [
        plots.plot_rmse_vs_lead(
            curves, hours, plot_dir / "rmse_vs_lead.png", units=units
        )
    ]
    if aggregator.conserved_names:
        paths.append(
            plots.plot_global_mean_drift(
                curves, hours, plot_dir / "global_mean_drift.png", units=units
            )
        )
    metrics_path = _training_metrics_path(config)
    if metrics_path.is_file():
        paths.extend(plots.plot_training_curves(metrics_path, plot_dir))
    name = stepper.out_names[0]
    prediction = last_chunk.prediction[name][0, -1].cpu().numpy()
    target = last_chunk.data[name][0, -1].cpu().numpy()
    metadata = info.variable_metadata.get(name, {})
    lead = last_chunk.lead_start + last_chunk.n_leads - 1
    valid = str(last_chunk.time[0, -1].astype("datetime64[m]")).replace("T", " ")
    paths.append(
        plots.plot_field_map(
            prediction,
            target,
            info.lat.numpy(),
            info.lon.numpy(),
            name,
            plot_dir / f"map_{name}.png",
            units=metadata.get("units"),
            long_name=metadata.get("long_name"),
            when=f"lead {lead * hours:g} h, valid {valid}",
        )
    )
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.evaluate CONFIG.yaml [--override key=value ...]``."""
    config = config_from_command_line(
        argv,
        prog="python -m fme.ace.evaluate",
        what="evaluator",
        config_type=EvaluatorConfig,
    )
    run_evaluation(config)
