"""EMA in training: validated with, checkpointed, resumed exactly, evaluated."""

import json

import pytest
import torch
from train_run_builders import DEFAULT_CONFIG, tiny_config, tiny_data, tiny_overrides

from fme.ace.evaluate.main import load_stepper
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint

EMA = ["ema={decay: 0.7}", "validate_using_ema=true"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


def _ckpt(experiment_dir, name="ckpt.tar"):
    return load_checkpoint(experiment_dir / "training_checkpoints" / name)


def test_resumed_runs_ema_equals_the_uninterrupted_one(data, tmp_path):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    run_training(tiny_config(data, full_dir, EMA))
    run_training(tiny_config(data, split_dir, [*EMA, "max_steps=3"]))
    assert _ckpt(split_dir)["ema"]["num_updates"] == 3
    run_training(tiny_config(data, split_dir, EMA))
    full, resumed = _ckpt(full_dir)["ema"], _ckpt(split_dir)["ema"]
    assert resumed["num_updates"] == full["num_updates"] > 3
    for name, value in full["params"].items():
        torch.testing.assert_close(resumed["params"][name], value, rtol=0, atol=1e-6)
    weights = _ckpt(full_dir)["trainable"]["stepper"]["module"]
    assert any(not torch.equal(weights[k], v) for k, v in full["params"].items())


def test_validation_and_best_checkpoint_use_the_average(data, tmp_path):
    run_training(tiny_config(data, tmp_path / "run", [*EMA, "max_epochs=1"]))
    latest, best = _ckpt(tmp_path / "run"), _ckpt(tmp_path / "run", "best_ckpt.tar")
    for name, value in latest["ema"]["params"].items():
        assert torch.equal(best["trainable"]["stepper"]["module"][name], value)
    # the evaluator takes the average from ckpt.tar, as ACE's does by default
    stepper = load_stepper(
        tmp_path / "run" / "training_checkpoints" / "ckpt.tar", use_ema=True
    )
    for name, value in stepper.base_module.state_dict().items():
        assert torch.equal(value, latest["ema"]["params"][name])
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("val/mean/loss" in r for r in records)


def test_ema_with_lora_is_refused(tmp_path):
    overrides = tiny_overrides(tmp_path, tmp_path / "run") + [
        *EMA,
        "stepper_training.lora={rank: 2, target_modules: [decoder.*]}",
    ]
    with pytest.raises(ValueError, match="not supported here: ema"):
        load_train_config(DEFAULT_CONFIG, overrides)
