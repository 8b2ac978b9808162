"""The ACE-format example config trains on ACE-layout data, and its corrector holds."""

from pathlib import Path

import torch
from train_run_builders import REPO

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.loader import build_data_loader
from fme.ace.evaluate.main import load_stepper
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training

GRAVITY = 9.80665  # m s-2


def test_ace_format_config_trains_and_conserves_dry_air(tmp_path: Path):
    paths = write_ace_format_dataset(
        tmp_path / "ace", n_lat=8, n_lon=16, n_levels=2, n_times=40
    )
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={tmp_path / 'run'}",
        f"train_loader.dataset.data_path={paths.data_dir}",
        "train_loader.dataset.subset={stop: 24}",
        f"validation.loader.dataset.data_path={paths.data_dir}",
        "validation.loader.dataset.subset={start: 24}",
        f"{step}.normalization.network.global_means_path={paths.means_path}",
        f"{step}.normalization.network.global_stds_path={paths.stds_path}",
        f"{step}.normalization.residual.global_means_path={paths.means_path}",
        f"{step}.normalization.residual.global_stds_path={paths.residual_stds_path}",
        f"{step}.builder.config.embed_dim=8",
        "logging.log_to_screen=false",
        "max_epochs=1",
    ]
    config = load_train_config(REPO / "configs" / "ace_atmosphere.yaml", overrides)
    run_training(config)
    stepper = load_stepper(tmp_path / "run" / "training_checkpoints" / "ckpt.tar")
    data = build_data_loader(
        config.train_loader, names=stepper.all_names, n_timesteps=2, shuffle=False
    )
    batch = next(iter(data.loader))
    inputs = {n: batch.data[n][:, 0] for n in stepper.in_names}
    with torch.no_grad():
        out = stepper.step.step(
            inputs,
            {n: batch.data[n][:, 1] for n in stepper.forcing_names},
            detach_uncorrected=True,
        ).output
    vertical = stepper.dataset_info.vertical_coordinate
    ops = stepper.dataset_info.gridded_operations

    def dry_air(state):
        water = torch.stack([state[f"specific_total_water_{k}"] for k in range(2)], -1)
        path = vertical.vertical_integral(water.double(), state["PRESsfc"].double())
        return ops.area_weighted_mean(state["PRESsfc"].double() - GRAVITY * path)

    torch.testing.assert_close(dry_air(out), dry_air(inputs), rtol=1e-6, atol=0.0)
    for k in range(2):
        assert out[f"specific_total_water_{k}"].min() >= 0
    assert out["PRATEsfc"].min() >= 0
