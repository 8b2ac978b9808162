"""Evaluation of an ACE-format checkpoint with the dry-air corrector (``configs/ace_atmosphere.yaml``).

It used to write its netCDF and then crash on the drift plot, because a
dry-air corrector conserves no variable's global mean; the drift it should
report is that of the dry-air mass and of the total water path.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from ace_checkpoint_builders import ace_checkpoint, ace_data

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import load_stepper, run_evaluation
from fme.ace.physics import GRAVITY_M_PER_S2 as GRAVITY
from fme.core.config_loading import from_dict_strict

N_LEVELS = 8  # configs/ace_atmosphere.yaml


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ace_eval")
    paths = ace_data(root / "ace", n_times=40)
    return ace_checkpoint(paths, root / "ckpt.tar", weight_scale=0.5), paths.data_dir


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


def test_evaluation_reports_dry_air_and_water_drift(checkpoint_and_data, tmp_path):
    checkpoint, data_dir = checkpoint_and_data
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
