"""Builders of tiny end-to-end training runs on generated shallow-water data."""

from pathlib import Path

from fme.ace.data.shallow_water import generate_shallow_water_dataset
from fme.ace.train.config import TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO / "configs" / "shallow_water.yaml"


def tiny_data(root: Path) -> Path:
    """The tiny shallow-water dataset under ``root`` (generated once)."""
    return generate_shallow_water_dataset(root / "data", preset="tiny", seed=0)


def tiny_overrides(data: Path, experiment_dir: Path) -> list[str]:
    """Overrides shrinking the default config to a seconds-long run."""
    stats = data / "stats"
    step = "stepper.step.config"
    network = f"{step}.normalization.network"
    residual = f"{step}.normalization.residual"
    return [
        f"experiment_dir={experiment_dir}",
        f"train_loader.dataset.data_path={data / 'train'}",
        f"validation.loader.dataset.data_path={data / 'validation'}",
        f"{network}.global_means_path={stats / 'centering.nc'}",
        f"{network}.global_stds_path={stats / 'scaling-full-field.nc'}",
        f"{residual}.global_means_path={stats / 'centering.nc'}",
        f"{residual}.global_stds_path={stats / 'scaling-residual.nc'}",
        f"{step}.builder.config.embed_dim=8",
        f"{step}.builder.config.num_layers=1",
        "train_loader.batch_size=4",
        "validation.loader.batch_size=4",
        "optimization.scheduler.kwargs.total_steps=20",
        "logging.log_to_screen=false",
        "logging.batch_log_interval=2",
        "max_epochs=2",
    ]


def tiny_config(data: Path, experiment_dir: Path, extra: list[str] = ()) -> TrainConfig:
    """The default config on tiny data, with ``extra`` overrides."""
    return load_train_config(
        DEFAULT_CONFIG, tiny_overrides(data, experiment_dir) + list(extra)
    )
