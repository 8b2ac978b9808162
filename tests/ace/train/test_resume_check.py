"""Resume compares the config with the checkpoint's: applies or refuses, never ignores."""

import json
import re

import pytest
import xarray as xr
from train_run_builders import tiny_config, tiny_data

from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


@pytest.fixture(scope="module")
def interrupted(data, tmp_path_factory):
    """A run stopped after 2 optimiser steps (copied per test)."""
    experiment_dir = tmp_path_factory.mktemp("interrupted") / "run"
    run_training(tiny_config(data, experiment_dir, ["max_steps=2"]))
    return experiment_dir


def _copy(interrupted, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(interrupted, target)
    return target


def _state(experiment_dir):
    return load_checkpoint(experiment_dir / "training_checkpoints" / "ckpt.tar")


@pytest.mark.parametrize(
    "override, key, old, new",
    [
        (
            "stepper.step.config.builder.config.embed_dim=16",
            "stepper.step.config.builder.config.embed_dim",
            "8",
            "16",
        ),
        (
            "optimization.optimizer_type=SGD",
            "optimization.optimizer_type",
            "'AdamW'",
            "'SGD'",
        ),
        ("optimization.lr=0.5", "optimization.lr", "0.002", "0.5"),
        ("train_loader.batch_size=2", "train_loader.batch_size", "4", "2"),
        ("seed=3", "seed", "0", "3"),
    ],
)
def test_settings_that_cannot_apply_are_refused_listing_old_and_new(
    data, interrupted, tmp_path, override, key, old, new
):
    experiment_dir = _copy(interrupted, tmp_path)
    before = _state(experiment_dir)
    config = tiny_config(data, experiment_dir, ["max_steps=4", override])
    with pytest.raises(ValueError) as info:
        run_training(config)
    message = str(info.value)
    assert "cannot resume from" in message
    assert f"{key}: {old} -> {new}" in message, message
    # nothing trained, nothing rewritten
    after = _state(experiment_dir)
    assert after["optimization"]["optimizer_steps"] == 2
    assert after["config"] == before["config"]


def test_swapped_normalisation_statistics_are_refused(data, interrupted, tmp_path):
    experiment_dir = _copy(interrupted, tmp_path)
    stats = tmp_path / "stats"
    stats.mkdir()
    with xr.open_dataset(data / "stats" / "scaling-full-field.nc") as ds:
        swapped = ds.load()
    swapped["geopotential"] = swapped["geopotential"] * 2
    swapped.to_netcdf(stats / "scaling-full-field.nc")
    network = "stepper.step.config.normalization.network"
    config = tiny_config(
        data,
        experiment_dir,
        [
            "max_steps=4",
            f"{network}.global_stds_path={stats / 'scaling-full-field.nc'}",
        ],
    )
    with pytest.raises(ValueError) as info:
        run_training(config)
    old = float(
        _state(experiment_dir)["trainable"]["stepper"]["normalizer"]["stds"][
            "geopotential"
        ]
    )
    message = str(info.value)
    prefix = f"normalization statistics normalizer.stds.geopotential: {old!r} -> "
    assert prefix in message, message
    new = float(re.search(re.escape(prefix) + r"(\d+\.\d+)", message).group(1))
    assert new == pytest.approx(2 * old, rel=1e-3)
    assert f"{network}.global_stds_path" not in message  # the path may move


def test_settings_that_can_change_are_applied_and_logged(data, interrupted, tmp_path):
    experiment_dir = _copy(interrupted, tmp_path)
    config = tiny_config(
        data,
        experiment_dir,
        ["max_steps=4", "logging.batch_log_interval=1", "checkpoint_every_n_steps=3"],
    )
    run_training(config)
    log = (experiment_dir / "out.log").read_text()
    assert "resuming with a changed setting: max_steps: 2 -> 4" in log
    assert "logging.batch_log_interval: 2 -> 1" in log
    assert "checkpoint_every_n_steps: None -> 3" in log
    state = _state(experiment_dir)
    assert state["optimization"]["optimizer_steps"] == 4
    # applied for real: batch metrics every step from now on
    records = [
        json.loads(line)
        for line in (experiment_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["optimizer_step"] for r in records if "batch_loss" in r] == [2, 3, 4]
    # the checkpoint and config.yaml record what ran
    assert state["config"]["logging"]["batch_log_interval"] == 1
    import yaml

    written = yaml.safe_load((experiment_dir / "config.yaml").read_text())
    assert written["max_steps"] == 4
    assert written["logging"]["batch_log_interval"] == 1


def test_start_only_settings_are_logged_as_unused_on_resume(
    data, interrupted, tmp_path
):
    experiment_dir = _copy(interrupted, tmp_path)
    weights = "stepper_training.parameter_init.weights_path"
    run_training(
        tiny_config(data, experiment_dir, ["max_steps=3", f"{weights}=/x.tar"])
    )
    log = (experiment_dir / "out.log").read_text()
    assert f"{weights} changed (None -> '/x.tar') but is used only when a run" in log
    assert _state(experiment_dir)["optimization"]["optimizer_steps"] == 3
