"""Build everything a training run needs from its config and run it."""

import argparse
import logging
import sys
from pathlib import Path

import torch
import yaml

from fme.ace.data.loader import DataLoaderConfig, GriddedData, build_data_loader
from fme.ace.inference.inline import InlineInference
from fme.ace.stepper.train_stepper import TrainStepper
from fme.ace.train.config import TrainConfig, load_train_config
from fme.core.config_loading import ConfigError, to_dict
from fme.core.distributed import DistributedContext
from fme.core.metrics_logger import MetricsLogger
from fme.core.parallelize import no_sync_context, wrap_data_parallel
from fme.core.rng_state import seed_everything
from fme.core.trainer import Trainer


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


def build_trainer(config: TrainConfig, dist: DistributedContext) -> Trainer:
    """Data, model, losses, optimiser and loop for ``config`` on this rank."""
    seed_everything(config.seed)
    experiment_dir = Path(config.experiment_dir)
    step_config = config.stepper.step.step_config
    names = step_config.all_names
    n_timesteps = config.stepper_training.max_forward_steps + 1
    train_data, validation_data = build_data(
        config, names=names, n_timesteps=n_timesteps, dist=dist
    )
    stepper = config.stepper.build(dataset_info=train_data.dataset_info)
    stepper.step.module = wrap_data_parallel(stepper.step.module, dist)
    train_stepper: TrainStepper = config.stepper_training.build(
        stepper, seed=config.seed, dist=dist
    )
    optimization = config.optimization.build(
        stepper.step.module.parameters(), no_sync=no_sync_context(stepper.step.module)
    )
    end_of_epoch = None
    if config.inference is not None:
        end_of_epoch = InlineInference(config.inference, stepper=stepper, dist=dist)
    n_params = sum(p.numel() for p in optimization.parameters)
    logging.info("training %d parameters", n_params)
    logger = MetricsLogger(
        config=config.logging,
        experiment_dir=experiment_dir,
        dist=dist,
        run_config=to_dict(config),
    )
    return Trainer(
        trainable=train_stepper,
        optimization=optimization,
        train_data=_DeviceData(train_data, dist.device),
        validation_data=(
            _DeviceData(validation_data, dist.device) if validation_data else None
        ),
        dist=dist,
        logger=logger,
        checkpoint_dir=config.checkpoint_dir,
        max_epochs=config.max_epochs,
        max_steps=config.max_steps,
        save_checkpoint=config.save_checkpoint,
        checkpoint_every_n_steps=config.checkpoint_every_n_steps,
        run_config=to_dict(config),
        best_metric=config.best_checkpoint_metric,
        batch_log_interval=config.logging.batch_log_interval,
        end_of_epoch=end_of_epoch,
    )


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
    """Train (resuming if a checkpoint exists); returns the experiment directory."""
    owns_dist = dist is None
    if dist is None:
        dist = DistributedContext.from_environment(config.distributed_backend)
    experiment_dir = Path(config.experiment_dir)
    config.logging.configure_python_logging(experiment_dir, dist)
    try:
        if dist.is_root:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            with (experiment_dir / "config.yaml").open("w") as f:
                yaml.safe_dump(to_dict(config), f, sort_keys=False)
        trainer = build_trainer(config, dist)
        try:
            trainer.train()
            if dist.is_root:
                _plot_training(trainer, experiment_dir)
        finally:
            trainer.logger.finish()
        if dist.is_root:
            logging.info(
                "checkpoints in %s, metrics in %s",
                config.checkpoint_dir,
                experiment_dir / "metrics.jsonl",
            )
    finally:
        if owns_dist:
            dist.shutdown()
    return experiment_dir


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
        config = load_train_config(args.config, args.override)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    run_training(config)
