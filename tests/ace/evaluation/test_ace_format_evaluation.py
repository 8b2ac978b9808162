"""Evaluation of an ACE-format checkpoint with the dry-air corrector.

It used to write its netCDF and then crash on the drift plot, because a
dry-air corrector conserves no variable's global mean; the drift it should
report is that of the dry-air mass and of the total water path.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fme.ace.corrector.atmosphere import GRAVITY
from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import load_stepper, run_evaluation
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training
from fme.core.config_loading import from_dict_strict

N_LEVELS = 2
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ace_eval")
    paths = write_ace_format_dataset(
        root / "ace", n_lat=8, n_lon=16, n_levels=N_LEVELS, n_times=40
    )
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={root / 'run'}",
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
    return root / "run" / "training_checkpoints" / "ckpt.tar", paths.data_dir


def _global_mean_columns(ds, stepper) -> dict[str, np.ndarray]:
    """Dry-air mass and total water path (kg/m^2), global means, from files."""
    vertical = stepper.dataset_info.vertical_coordinate
    ops = stepper.dataset_info.gridded_operations
    ps = torch.tensor(ds["PRESsfc"].values, dtype=torch.float64)
    water = torch.stack(
        [
            torch.tensor(ds[f"specific_total_water_{k}"].values, dtype=torch.float64)
            for k in range(N_LEVELS)
        ],
        dim=-1,
    )
    path = vertical.vertical_integral(water, ps, gravity=GRAVITY)
    return {
        "dry_air_mass": ops.area_weighted_mean((ps - GRAVITY * path) / GRAVITY).numpy(),
        "total_water_path": ops.area_weighted_mean(path).numpy(),
    }


def test_evaluation_reports_dry_air_and_water_drift(trained, tmp_path):
    checkpoint, data_dir = trained
    out = tmp_path / "eval"
    config = from_dict_strict(
        EvaluatorConfig,
        {
            "experiment_dir": str(out),
            "checkpoint_path": str(checkpoint),
            "n_forward_steps": 6,
            "forward_steps_in_memory": 4,
            "logging": {"log_to_screen": False},
            "loader": {
                "dataset": {"data_path": str(data_dir)},
                "start_indices": {"first": 2, "n_initial_conditions": 2, "interval": 5},
            },
            "data_writer": {"save_prediction_files": True},
        },
    )
    metrics = run_evaluation(config)
    stepper = load_stepper(checkpoint)
    with xr.open_dataset(out / "autoregressive_predictions.nc") as ds:
        predicted = _global_mean_columns(ds.load(), stepper)  # [sample, lead]
    files = [xr.open_dataset(p).load() for p in sorted(data_dir.glob("*.nc"))]
    data = xr.concat(
        [f.drop_vars([v for v in f if "time" not in f[v].dims]) for f in files], "time"
    )
    initial = _global_mean_columns(data.isel(time=[2, 7]), stepper)  # [sample]
    for quantity in ("dry_air_mass", "total_water_path"):
        drift = (predicted[quantity] - initial[quantity][:, None]).mean(axis=0)
        for lead in range(1, 7):
            key = f"global_mean_drift/{quantity}/lead_{lead}"
            assert metrics[key] == pytest.approx(drift[lead - 1], rel=1e-3, abs=1e-6)
    # the corrector conserves dry air: its drift is float32 rounding only
    scale = float(np.abs(initial["dry_air_mass"]).mean())
    assert abs(metrics["global_mean_drift/dry_air_mass"]) < 1e-5 * scale
    assert (out / "plots" / "global_mean_drift.png").is_file()
