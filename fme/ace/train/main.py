"""Build everything a training run needs from its config and run it."""

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from fme.ace.data.loader import DataLoaderConfig, GriddedData, build_data_loader
from fme.ace.inference.inline import INFERENCE_ERROR, InlineInference
from fme.ace.stepper.parameter_init import initialize_stepper
from fme.ace.stepper.stepper import Stepper
from fme.ace.stepper.train_stepper import TrainStepper
from fme.ace.train.best_metric import check_best_metric
from fme.ace.train.config import TrainConfig, load_train_config
from fme.ace.train.phases import (
    PhaseProgress,
    ResolvedPhase,
    check_phase_network_settings,
    finish_network,
    prepare_network,
)
from fme.ace.train.resume_check import check_resume
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import ConfigError, to_dict
from fme.core.distributed import DistributedContext
from fme.core.ema import EMATracker
from fme.core.metrics_logger import MetricsLogger
from fme.core.parallelize import no_sync_context
from fme.core.process_resources import configure_process
from fme.core.rng_state import seed_everything
from fme.core.trainer import LATEST_CHECKPOINT, Trainer


def build_data(
    config: TrainConfig, *, names: list[str], n_timesteps: int, dist: DistributedContext
) -> tuple[GriddedData, GriddedData | None]:
    """Training and validation data sharded for this rank."""

    def build(loader_config: DataLoaderConfig, shuffle: bool) -> GriddedData:
        return build_data_loader(
            loader_config,
            names=names,
            n_timesteps=n_timesteps,
            shuffle=shuffle,
            rank=dist.rank,
            world_size=dist.world_size,
            seed=config.seed,
        )

    train = build(config.train_loader, shuffle=True)
    validation = None
    if config.validation is not None:
        validation = build(config.validation.loader, shuffle=False)
    return train, validation


class _DeviceData:
    """A data source whose batches are moved to the training device."""

    def __init__(self, data: GriddedData, device: torch.device):
        self._data = data
        self._device = device
        self.sampler = data.sampler
        self.n_batches = data.n_batches

    @property
    def loader(self):
        return (batch.to(self._device) for batch in self._data.loader)

    def set_epoch(self, epoch: int) -> None:
        self._data.set_epoch(epoch)


def _mean_over_ranks(dist: DistributedContext):
    if not dist.is_distributed:
        return None

    def mean(value: torch.Tensor) -> torch.Tensor:
        return dist.reduce_sum(value) / dist.world_size

    return mean


def _latest_checkpoint(config: TrainConfig) -> dict[str, Any] | None:
    """The run's latest checkpoint, or None (fresh run)."""
    path = config.checkpoint_dir / LATEST_CHECKPOINT
    if not path.is_file():
        return None
    return load_checkpoint(path)


def build_ema(
    config: TrainConfig, stepper: Stepper, *, resumed: bool
) -> EMATracker | None:
    """The run's weight average, started from ``resume_ema_ckpt_path`` if set.

    A resumed run's trainer later restores the average from its own checkpoint.
    """
    ema_config = config.ema_config
    if ema_config is None:
        return None
    ema = ema_config.build(stepper.base_module)
    if ema_config.resume_ema_ckpt_path is not None and not resumed:
        path = ema_config.resume_ema_ckpt_path
        state = load_checkpoint(path).get("ema")
        if state is None:
            raise ValueError(f"ema.resume_ema_ckpt_path {path!r} holds no EMA state")
        ema.load_state(state, keep_settings=True)
    return ema


def build_phase_trainer(
    config: TrainConfig,
    phase: ResolvedPhase,
    *,
    stepper: Stepper,
    data: tuple[GriddedData, GriddedData | None],
    progress: PhaseProgress,
    dist: DistributedContext,
    logger: MetricsLogger,
    end_of_epoch: InlineInference | None,
    ema: EMATracker | None = None,
) -> tuple[Trainer, TrainStepper]:
    """The trainer of one phase: freezing/LoRA, DDP, a new optimiser, losses."""
    prepare_network(stepper, phase, dist=dist)
    optimization = phase.optimization.build(
        stepper.module.parameters(),
        start_step=progress.start_step,
        no_sync=no_sync_context(stepper.module),
        mean_over_ranks=_mean_over_ranks(dist),
    )
    train_stepper: TrainStepper = phase.stepper_training.build(
        stepper, clock=optimization.clock, seed=config.seed + phase.index, dist=dist
    )
    max_epochs, max_steps = progress.trainer_limits(
        phase, run_max_steps=config.max_steps
    )
    train_data, validation_data = data
    trainer = Trainer(
        trainable=train_stepper,
        optimization=optimization,
        train_data=_DeviceData(train_data, dist.device),
        validation_data=(
            _DeviceData(validation_data, dist.device) if validation_data else None
        ),
        dist=dist,
        logger=logger,
        checkpoint_dir=config.checkpoint_dir,
        max_epochs=max_epochs,
        max_steps=max_steps,
        save_checkpoint=config.save_checkpoint,
        checkpoint_every_n_steps=config.checkpoint_every_n_steps,
        run_config=to_dict(config),
        best_metric=config.best_checkpoint_metric,
        best_inference_metric=(
            INFERENCE_ERROR
            if end_of_epoch is not None and end_of_epoch.selects_checkpoint
            else None
        ),
        batch_log_interval=config.logging.batch_log_interval,
        end_of_epoch=end_of_epoch,
        start_epoch=progress.start_epoch,
        phase=progress.to_state(),
        ema=ema,
        validate_using_ema=config.validate_using_ema,
    )
    return trainer, train_stepper


def train_phases(
    config: TrainConfig,
    dist: DistributedContext,
    logger: MetricsLogger,
    *,
    on_start: Callable[[], None] = lambda: None,
) -> Trainer:
    """Train ``config``'s phases in order, resuming in the checkpoint's phase.

    A fresh run initialises the network from ``parameter_init.weights_path``
    (if set); a resumed run takes every state from ``ckpt.tar``. Every
    phase's settings are checked against the network before the first one
    trains. Returns the last phase's trainer.
    """
    seed_everything(config.seed)
    phases = config.resolved_phases()
    latest = _latest_checkpoint(config)
    resumed = None if latest is None else PhaseProgress.from_state(latest.get("phase"))
    progress = resumed or PhaseProgress()
    if progress.index >= len(phases):
        raise ValueError(
            f"the checkpoint in {config.checkpoint_dir} is from phase "
            f"{progress.index}, but the config has {len(phases)} phase(s)"
        )
    names = config.stepper.selector.step_config.all_names
    data_cache: dict[int, tuple[GriddedData, GriddedData | None]] = {}

    def data_for(phase: ResolvedPhase) -> tuple[GriddedData, GriddedData | None]:
        n_timesteps = phase.stepper_training.max_forward_steps + 1
        if n_timesteps not in data_cache:
            data_cache.clear()
            data_cache[n_timesteps] = build_data(
                config, names=names, n_timesteps=n_timesteps, dist=dist
            )
        return data_cache[n_timesteps]

    remaining = phases[progress.index :]
    train_data, _ = data_for(remaining[0])
    stepper = config.stepper.build(dataset_info=train_data.dataset_info)
    if latest is None:
        initialize_stepper(stepper, config.stepper_training.parameter_init)
    else:
        check_resume(
            config,
            latest,
            stepper=stepper,
            path=str(config.checkpoint_dir / LATEST_CHECKPOINT),
        )
    for phase in remaining:  # fail before training for any phase
        phase.stepper_training.build(stepper, seed=config.seed, dist=dist)
        check_phase_network_settings(stepper, phase)
    ema = build_ema(config, stepper, resumed=resumed is not None)
    end_of_epoch = None
    if config.inference is not None:
        end_of_epoch = InlineInference(config.inference, stepper=stepper, dist=dist)
    carried_loss_weights: dict[str, Any] | None = None
    trainer: Trainer | None = None
    for phase in remaining:
        if len(phases) > 1:
            logging.info(
                "%s of %d: from optimizer step %d, epoch %d",
                phase.label,
                len(phases),
                progress.start_step,
                progress.start_epoch,
            )
        trainer, train_stepper = build_phase_trainer(
            config,
            phase,
            stepper=stepper,
            data=data_for(phase),
            progress=progress,
            dist=dist,
            logger=logger,
            end_of_epoch=end_of_epoch,
            ema=ema,
        )
        if carried_loss_weights is not None and phase.carries_loss_weights:
            train_stepper.loss_weights.load_state_dict(carried_loss_weights)
        check_best_metric(
            config.best_checkpoint_metric,
            train_stepper=train_stepper,
            validation=data_for(phase)[1],
            inference=end_of_epoch,
            dist=dist,
            label=phase.label if len(phases) > 1 else "",
        )
        if phase is remaining[0]:
            on_start()
        trainer.train(resume=resumed is not None and phase is remaining[0])
        step = trainer.optimization.optimizer_steps
        if not progress.phase_finished(phase, epoch=trainer.epoch, step=step):
            break  # stopped by the run's max_steps; resumable
        if finish_network(stepper):
            logging.info("%s: merged LoRA adapters into the weights", phase.label)
        if len(phases) > 1:
            trainer.save_as(f"phase_{phase.index}.tar")
        carried_loss_weights = train_stepper.loss_weights.state_dict()
        progress = PhaseProgress(
            index=phase.index + 1,
            start_step=step,
            start_epoch=trainer.next_phase_epoch,
        )
    assert trainer is not None
    return trainer


def _plot_training(trainer: Trainer, experiment_dir: Path) -> None:
    """Loss-term and loss-weight curves into ``experiment_dir/plots``."""
    from fme.ace.evaluation import plots

    metrics_path = experiment_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        return
    paths = plots.plot_training_curves(metrics_path, experiment_dir / "plots")
    trainer.logger.log_images(
        plots.image_paths_for_wandb(paths),
        optimizer_step=trainer.optimization.optimizer_steps,
    )
    logging.info("training plots in %s", experiment_dir / "plots")


def run_training(config: TrainConfig, dist: DistributedContext | None = None) -> Path:
    """Train (resuming if a checkpoint exists); returns the experiment directory.

    ``config.yaml`` is written once the config has been checked against the
    data and the network, so a start that fails leaves no config, metrics or
    checkpoints: only ``out.log`` with the error. Every fatal error is logged
    there with its traceback before it propagates.
    """
    owns_dist = dist is None
    if dist is None:
        dist = DistributedContext.from_environment(
            config.distributed_backend,
            collective_timeout=config.distributed_timeout_seconds,
        )
    experiment_dir = Path(config.experiment_dir)
    config.logging.configure_python_logging(experiment_dir, dist)
    started = False

    def start() -> None:
        nonlocal started
        if dist.is_root:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            with (experiment_dir / "config.yaml").open("w") as f:
                yaml.safe_dump(to_dict(config), f, sort_keys=False)
        started = True

    finished = False
    try:
        _train_and_report(config, dist, experiment_dir, on_start=start)
        finished = True
    except Exception as err:
        stage = "training stopped" if started else "start failed before training"
        peer = dist.peer_failure(err)
        logging.error("%s: %s", stage, peer or err, exc_info=err)
        if peer is not None:
            raise peer from err
        raise
    finally:
        if owns_dist:
            # the trainer and its DDP wrapper are gone with _train_and_report's frame
            dist.shutdown(clean=finished)
    return experiment_dir


def _train_and_report(
    config: TrainConfig,
    dist: DistributedContext,
    experiment_dir: Path,
    *,
    on_start: Callable[[], None],
) -> None:
    """The run itself; every object built for it is released when it returns."""
    logger = MetricsLogger(
        config=config.logging,
        experiment_dir=experiment_dir,
        dist=dist,
        run_config=to_dict(config),
    )
    try:
        trainer = train_phases(config, dist, logger, on_start=on_start)
        if dist.is_root and config.plot_training:
            _plot_training(trainer, experiment_dir)
    finally:
        logger.finish()
    if dist.is_root:
        logging.info(
            "checkpoints in %s, metrics in %s",
            config.checkpoint_dir,
            experiment_dir / "metrics.jsonl",
        )


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m fme.ace.train CONFIG.yaml [--override key.path=value ...]``."""
    parser = argparse.ArgumentParser(prog="python -m fme.ace.train")
    parser.add_argument("config", help="training YAML")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="dotted overrides, e.g. max_epochs=2 optimization.lr=1e-4",
    )
    args = parser.parse_args(argv)
    try:
        configure_process()
        config = load_train_config(args.config, args.override)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        run_training(config)
    except Exception as err:
        details = ""
        if config.logging.log_to_file:
            details = f" (details in {Path(config.experiment_dir) / 'out.log'})"
        message = " ".join(str(err).split())  # one line
        print(f"error: {message}{details}", file=sys.stderr)
        sys.exit(1)
