"""Train → checkpoint → resume → evaluate on tiny generated data."""

import json

import pytest
import torch
import xarray as xr
from train_run_builders import tiny_config, tiny_data

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import run_evaluation
from fme.ace.train.main import run_training
from fme.core import compiled_network
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final_weights(experiment_dir):
    state = load_checkpoint(experiment_dir / "training_checkpoints" / "ckpt.tar")
    return state["trainable"]["stepper"]["module"], state


def test_interrupted_mid_epoch_run_resumes_to_identical_result(data, tmp_path):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    run_training(tiny_config(data, full_dir))
    # stop after 3 optimiser steps (mid-epoch 0), then resume with the same command
    run_training(tiny_config(data, split_dir, ["max_steps=3"]))
    interrupted, state = _final_weights(split_dir)
    assert state["optimization"]["optimizer_steps"] == 3
    assert state["trainer"]["sampler"]["batches_done"] == 3
    run_training(tiny_config(data, split_dir))
    full, full_state = _final_weights(full_dir)
    resumed, resumed_state = _final_weights(split_dir)
    assert any(not torch.equal(interrupted[k], resumed[k]) for k in full)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)
    assert (
        resumed_state["optimization"]["optimizer_steps"]
        == (full_state["optimization"]["optimizer_steps"])
    )
    epoch_records = [
        r for r in _records(full_dir / "metrics.jsonl") if "val/mean/loss" in r
    ]
    resumed_records = [
        r for r in _records(split_dir / "metrics.jsonl") if "val/mean/loss" in r
    ]
    assert len(epoch_records) == len(resumed_records) == 2
    for a, b in zip(epoch_records, resumed_records, strict=True):
        assert set(a) == set(b)
        for key in ("train/mean/loss", "val/mean/loss", "lr", "optimizer_step"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_metrics_checkpoints_and_evaluation(data, tmp_path):
    experiment_dir = tmp_path / "run"
    config = tiny_config(
        data,
        experiment_dir,
        [
            "stepper_training.corrector_loss={precorrector_optimization: {}, "
            "regularization: {weight: 0.1}}",
        ],
    )
    run_training(config)
    checkpoints = experiment_dir / "training_checkpoints"
    assert (checkpoints / "ckpt.tar").is_file() and (
        checkpoints / "best_ckpt.tar"
    ).is_file()
    records = _records(experiment_dir / "metrics.jsonl")
    assert all("optimizer_step" in r and "epoch" in r for r in records)
    epoch = [r for r in records if "train/mean/loss" in r][-1]
    for key in (
        "train/mean/loss_step_0",
        "train/mean/loss_step_1",
        "train/mean/loss/tracer",
        "train/mean/corrector_regularization",
        "train/mean/corrector_regularization_step_1",
        "train/mean/correction_rms/tracer",
        "val/mean/loss",
        "val/mean/main_loss",
        "lr",
    ):
        assert isinstance(epoch[key], float), key
    batch = [r for r in records if "batch_loss" in r]
    assert batch and "batch_corrector_regularization" in batch[0]
    assert batch[0]["loss_weight/main"] == 1.0
    assert batch[0]["loss_weight/corrector_regularization"] == 0.1
    for name in ("training_curves", "loss_weights"):
        assert (experiment_dir / "plots" / f"{name}.png").stat().st_size > 1000

    eval_dir = tmp_path / "eval"
    eval_config = from_dict_strict(
        EvaluatorConfig,
        {
            "experiment_dir": str(eval_dir),
            "checkpoint_path": str(checkpoints / "best_ckpt.tar"),
            "n_forward_steps": 5,
            "forward_steps_in_memory": 2,
            "logging": {"log_to_screen": False},
            "loader": {
                "dataset": {"data_path": str(data / "validation")},
                "start_indices": {"first": 0, "n_initial_conditions": 3, "interval": 2},
            },
        },
    )
    metrics = run_evaluation(eval_config)
    with xr.open_dataset(eval_dir / "autoregressive_predictions.nc") as pred:
        assert pred["tracer"].dims == ("sample", "time", "lat", "lon")
        assert pred["tracer"].shape == (3, 5, 8, 16)
        # the corrector keeps the tracer positive
        assert float(pred["tracer"].min()) >= 0.0
    with xr.open_dataset(eval_dir / "autoregressive_target.nc") as target:
        with xr.open_dataset(data / "validation" / "trajectory_000.nc") as source:
            expected = source["tracer"].isel(time=2 + 3).values  # sample 1, lead 3
        assert target["tracer"].isel(sample=1, time=2).values == pytest.approx(
            expected, rel=1e-6
        )
    # a conserving corrector: global means do not drift (float32 rounding only)
    assert abs(metrics["global_mean_drift/tracer"]) < 1e-5
    assert abs(metrics["global_mean_drift/geopotential"]) < 1e-2
    assert metrics["rmse/tracer"] > 0
    assert json.loads((eval_dir / "metrics.json").read_text()) == pytest.approx(metrics)
    for name in ("rmse_vs_lead", "global_mean_drift", "map_geopotential"):
        assert (eval_dir / "plots" / f"{name}.png").stat().st_size > 1000


def test_inline_inference_metrics_choose_best_checkpoint(data, tmp_path):
    experiment_dir = tmp_path / "inline"
    inference = (
        "inference={loader: {dataset: {data_path: "
        + str(data / "validation")
        + "}, start_indices: {first: 0, n_initial_conditions: 2, interval: 3}}, "
        "n_forward_steps: 3, forward_steps_in_memory: 2}"
    )
    config = tiny_config(
        data,
        experiment_dir,
        [inference, "best_checkpoint_metric=inference/rmse/geopotential"],
    )
    run_training(config)
    epochs = [
        r
        for r in _records(experiment_dir / "metrics.jsonl")
        if "lr" in r and "epoch" in r and "train/mean/loss" in r
    ]
    assert len(epochs) == 2
    for record in epochs:
        assert record["inference/rmse/geopotential"] > 0
        assert abs(record["inference/global_mean_drift/tracer"]) < 1e-5
        assert "inference/correction_rms/tracer" in record
    best = load_checkpoint(experiment_dir / "training_checkpoints" / "best_ckpt.tar")
    best_epoch = min(epochs, key=lambda r: r["inference/rmse/geopotential"])["epoch"]
    assert best["trainer"]["epoch"] == best_epoch


def test_a_stochastic_network_resumes_to_identical_result(data, tmp_path):
    """Noise channels draw from the RNG: resume must restore its state."""
    noise = ["stepper.step.config.builder.config.noise_channels=2", "max_epochs=1"]
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    run_training(tiny_config(data, full_dir, noise))
    run_training(tiny_config(data, split_dir, [*noise, "max_steps=2"]))
    run_training(tiny_config(data, split_dir, noise))
    full, full_state = _final_weights(full_dir)
    resumed, _ = _final_weights(split_dir)
    for name, value in full.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6)
    # the noise matters: another seed's noise gives other weights
    other_dir = tmp_path / "other"
    run_training(tiny_config(data, other_dir, [*noise, "seed=1"]))
    other, _ = _final_weights(other_dir)
    assert any(not torch.equal(other[k], full[k]) for k in full)


def test_compile_failure_trains_eagerly_to_the_eager_numbers(
    data, tmp_path, monkeypatch
):
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler found (forced in the test)")

    monkeypatch.setattr(compiled_network, "_BACKEND", failing_backend)
    eager_dir, compiled_dir = tmp_path / "eager", tmp_path / "compiled"
    run_training(tiny_config(data, eager_dir, ["max_steps=3"]))
    run_training(
        tiny_config(
            data, compiled_dir, ["max_steps=3", "stepper_training.compile=true"]
        )
    )
    log = (compiled_dir / "out.log").read_text()
    assert "compiling the network failed, running it eagerly instead" in log
    assert "no C++ compiler found (forced in the test)" in log
    assert log.count("running it eagerly") == 1
    eager, eager_state = _final_weights(eager_dir)
    compiled, compiled_state = _final_weights(compiled_dir)
    assert compiled_state["optimization"]["optimizer_steps"] == 3
    assert set(compiled) == set(eager)  # no wrapper prefix in the checkpoint
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=0, atol=1e-6)
    eager_loss = [
        r["train/mean/loss"]
        for r in _records(eager_dir / "metrics.jsonl")
        if "train/mean/loss" in r
    ]
    compiled_loss = [
        r["train/mean/loss"]
        for r in _records(compiled_dir / "metrics.jsonl")
        if "train/mean/loss" in r
    ]
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)


def test_training_plots_are_opt_out(data, tmp_path):
    experiment_dir = tmp_path / "run"
    run_training(
        tiny_config(data, experiment_dir, ["max_steps=2", "plot_training=false"])
    )
    assert (experiment_dir / "training_checkpoints" / "ckpt.tar").is_file()
    assert (experiment_dir / "metrics.jsonl").is_file()
    assert not (experiment_dir / "plots").exists()
    assert "training plots in" not in (experiment_dir / "out.log").read_text()
