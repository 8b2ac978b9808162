"""The ACE2-style example config trains and evaluates on the toy atmosphere.

After training, one step of the saved model is checked against the physics:
dry air at the initial condition's, the column moisture budget and the global
energy budget closed, the ocean's surface temperature the data's.
"""

import json
from pathlib import Path

import numpy as np
import torch
from train_run_builders import REPO

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.loader import build_data_loader
from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import load_stepper, run_evaluation
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training
from fme.core.config_loading import apply_overrides, from_dict_strict, load_yaml

G, L_V, DT = 9.80665, 2.5e6, 6 * 3600.0


def test_ace2_config_trains_evaluates_and_keeps_the_budgets(tmp_path: Path):
    paths = write_ace_format_dataset(
        tmp_path / "ace", n_lat=8, n_lon=16, n_levels=8, n_times=40
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
    evaluate = apply_overrides(
        load_yaml(REPO / "configs" / "ace_atmosphere_evaluate.yaml"),
        [
            f"experiment_dir={tmp_path / 'evaluate'}",
            f"checkpoint_path={tmp_path / 'run' / 'training_checkpoints' / 'ckpt.tar'}",
            f"loader.dataset.data_path={paths.data_dir}",
            "loader.start_indices.first=16",
            "logging.log_to_screen=false",
        ],
    )
    run_evaluation(from_dict_strict(EvaluatorConfig, evaluate))
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics  # per-variable skill written

    stepper = load_stepper(tmp_path / "run" / "training_checkpoints" / "ckpt.tar")
    data = build_data_loader(
        config.train_loader, names=stepper.all_names, n_timesteps=3, shuffle=False
    )
    batch = next(iter(data.loader)).data
    with torch.no_grad():
        out = next(
            stepper.rollout(
                initial_condition={n: batch[n][:, 0] for n in stepper.prognostic_names},
                forcing={n: batch[n] for n in stepper.forcing_names},
                n_forward_steps=1,
                detach_uncorrected=True,
            )
        )
    state, before = out.output, {n: batch[n][:, 0] for n in batch}
    vertical = stepper.dataset_info.vertical_coordinate
    assert vertical is not None
    ak, bk = vertical.ak.double().numpy(), vertical.bk.double().numpy()
    weights = np.cos(np.deg2rad(stepper.dataset_info.lat.double().numpy()))[:, None]

    def mean(x):
        return (x * weights).sum(axis=(-2, -1)) / (weights.sum() * x.shape[-1])

    def water_path(s):
        ps = s["PRESsfc"].double().numpy()
        return (
            sum(
                s[f"specific_total_water_{k}"].double().numpy()
                * ((ak[k + 1] - ak[k]) + (bk[k + 1] - bk[k]) * ps)
                for k in range(8)
            )
            / G
        )

    def dry(s):
        return mean(s["PRESsfc"].double().numpy() - G * water_path(s))

    np.testing.assert_allclose(dry(state), dry(before), rtol=1e-6)
    tendency = (water_path(state) - water_path(before)) / DT
    budget = (
        state["LHTFLsfc"].double().numpy() / L_V
        - state["PRATEsfc"].double().numpy()
        + state["tendency_of_total_water_path_due_to_advection"].double().numpy()
    )
    largest = max(water_path(state).max(), water_path(before).max())
    np.testing.assert_allclose(tendency, budget, atol=16 * 2.0**-24 * largest / DT)
    for k in range(8):
        assert state[f"specific_total_water_{k}"].min() >= 0
    # prescribed ocean: the data's surface temperature where the ocean fraction rounds to 1
    ocean = torch.round(batch["ocean_fraction"][:, 1]) == 1
    assert ocean.any() and (~ocean).any()
    sst = state["surface_temperature"]
    assert torch.equal(sst[ocean], batch["surface_temperature"][:, 1][ocean])
    assert "surface_temperature" not in out.uncorrected


def test_energy_budget_without_surface_height_fails_before_training(tmp_path: Path):
    paths = write_ace_format_dataset(
        tmp_path / "ace", n_lat=4, n_lon=8, n_levels=8, n_times=12
    )
    config_path = REPO / "configs" / "ace_atmosphere.yaml"
    in_names = load_yaml(config_path)["stepper"]["step"]["config"]["in_names"]
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={tmp_path / 'run'}",
        f"train_loader.dataset.data_path={paths.data_dir}",
        "train_loader.dataset.subset={stop: 8}",
        f"validation.loader.dataset.data_path={paths.data_dir}",
        "validation.loader.dataset.subset={start: 4}",
        f"{step}.in_names={[n for n in in_names if n != 'HGTsfc']}",
        f"{step}.normalization.network.global_means_path={paths.means_path}",
        f"{step}.normalization.network.global_stds_path={paths.stds_path}",
        f"{step}.normalization.residual.global_means_path={paths.means_path}",
        f"{step}.normalization.residual.global_stds_path={paths.residual_stds_path}",
        "logging.log_to_screen=false",
    ]
    config = load_train_config(config_path, overrides)
    try:
        run_training(config)
    except ValueError as err:
        message = str(err)
    else:
        raise AssertionError("training started without HGTsfc")
    assert "total_energy_budget_correction" in message and "HGTsfc" in message
    assert not (tmp_path / "run" / "training_checkpoints").exists()
