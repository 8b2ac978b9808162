"""Faults during a run: kills between checkpoint writes, stale files, bad starts."""

import json

import pytest
import torch
import yaml
from train_run_builders import tiny_config, tiny_data

from fme.ace.train.main import main, run_training
from fme.core import trainer as trainer_module
from fme.core.checkpoint import load_checkpoint
from fme.core.nonfinite import NonFiniteError
from fme.core.optimization import Optimization


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` sees it."""


def _best_values(checkpoints):
    latest = load_checkpoint(checkpoints / "ckpt.tar")["trainer"]["best_value"]
    best_path = checkpoints / "best_ckpt.tar"
    best = (
        load_checkpoint(best_path)["trainer"]["best_value"]
        if best_path.is_file()
        else float("inf")
    )
    return latest, best


def test_a_kill_between_checkpoint_writes_never_leaves_best_older(
    data, tmp_path, monkeypatch
):
    experiment_dir = tmp_path / "run"
    checkpoints = experiment_dir / "training_checkpoints"
    real_save = trainer_module.save_checkpoint
    writes = []

    def save_then_die(state, path):
        real_save(state, path)
        writes.append(path.name)
        if len(writes) == 1:  # killed right after the first file of epoch 1
            raise _Killed()

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run_training(tiny_config(data, experiment_dir, ["max_epochs=1"]))
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    # best_ckpt.tar is written first: ckpt.tar may be older, never the other way
    assert writes == ["best_ckpt.tar"]
    assert not (checkpoints / "ckpt.tar").exists()
    run_training(tiny_config(data, experiment_dir, ["max_epochs=2"]))
    latest, best = _best_values(checkpoints)
    assert best == latest < float("inf")


def test_resume_repairs_a_best_checkpoint_older_than_the_recorded_best(data, tmp_path):
    experiment_dir = tmp_path / "run"
    checkpoints = experiment_dir / "training_checkpoints"
    run_training(tiny_config(data, experiment_dir, ["max_epochs=1"]))
    stale = load_checkpoint(checkpoints / "best_ckpt.tar")
    # what the old write order left when killed between the two files
    (checkpoints / "best_ckpt.tar").unlink()
    run_training(tiny_config(data, experiment_dir, ["max_epochs=1"]))
    repaired = load_checkpoint(checkpoints / "best_ckpt.tar")
    assert repaired["trainer"]["best_value"] == stale["trainer"]["best_value"]
    for name, value in stale["trainable"]["stepper"]["module"].items():
        assert torch.equal(repaired["trainable"]["stepper"]["module"][name], value)


def test_stale_temporary_files_of_killed_writes_are_removed_at_start(data, tmp_path):
    experiment_dir = tmp_path / "run"
    checkpoints = experiment_dir / "training_checkpoints"
    checkpoints.mkdir(parents=True)
    stale = checkpoints / ".ckpt.tar.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    run_training(tiny_config(data, experiment_dir, ["max_steps=1"]))
    assert not stale.exists()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["ckpt.tar"]


def test_a_map_diagnostic_best_metric_is_accepted(data, tmp_path):
    # its names depend on the data a rollout covers: checked by family
    experiment_dir = tmp_path / "run"
    extra = [
        "best_checkpoint_metric=inference/time_mean/rmse/geopotential",
        "inference={loader: {dataset: {data_path: "
        f"{data / 'validation'}}}, start_indices: {{first: 0, "
        "n_initial_conditions: 1}}, n_forward_steps: 2}",
        "max_epochs=1",
    ]
    run_training(tiny_config(data, experiment_dir, extra))
    checkpoints = experiment_dir / "training_checkpoints"
    assert (checkpoints / "best_ckpt.tar").exists()
    records = [json.loads(line) for line in (experiment_dir / "metrics.jsonl").open()]
    assert any("inference/time_mean/rmse/geopotential" in r for r in records)


@pytest.mark.parametrize(
    "metric, allowed",
    [
        ("val/mean/los", "'val/mean/loss', 'val/mean/loss/eastward_wind'"),
        ("inference/rmse/geopotentail", "'inference/rmse/geopotential'"),
        # not a map-diagnostic family either (time_mean is)
        ("inference/time_means/rmse/geopotential", "'inference/rmse/geopotential'"),
    ],
)
def test_a_best_metric_never_logged_fails_before_training(
    data, tmp_path, metric, allowed
):
    experiment_dir = tmp_path / "run"
    extra = [f"best_checkpoint_metric={metric}"]
    if metric.startswith("inference/"):
        extra.append(
            "inference={loader: {dataset: {data_path: "
            f"{data / 'validation'}}}, start_indices: {{first: 0, "
            "n_initial_conditions: 1}}, n_forward_steps: 2}"
        )
    with pytest.raises(ValueError) as info:
        run_training(tiny_config(data, experiment_dir, extra))
    message = str(info.value)
    assert f"best_checkpoint_metric {metric!r} is never logged" in message
    assert allowed in message
    assert not (experiment_dir / "training_checkpoints").exists()
    assert not (experiment_dir / "metrics.jsonl").exists()


def _main_fails(config, tmp_path, capsys) -> list[str]:
    """Run ``main`` on ``config`` written as YAML; it must exit 1. Its stderr lines."""
    from fme.core.config_loading import to_dict

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


def test_a_failed_start_leaves_only_out_log_with_the_error(data, tmp_path, capsys):
    experiment_dir = tmp_path / "run"
    config = tiny_config(data, experiment_dir, ["best_checkpoint_metric=val/mean/x"])
    err = _main_fails(config, tmp_path, capsys)
    assert len(err) == 1 and err[0].startswith("error: best_checkpoint_metric"), err
    assert str(experiment_dir / "out.log") in err[0]
    # no config.yaml, metrics or checkpoints: a start that never trained
    assert sorted(p.name for p in experiment_dir.iterdir()) == ["out.log"]
    log = (experiment_dir / "out.log").read_text()
    assert "best_checkpoint_metric 'val/mean/x' is never logged" in log
    assert "start failed before training" in log


def test_a_fatal_error_during_training_is_in_out_log(data, tmp_path, capsys):
    experiment_dir = tmp_path / "run"
    config = tiny_config(data, experiment_dir, ["stepper_training.loss.type=NaN"])
    err = _main_fails(config, tmp_path, capsys)
    assert len(err) == 1 and "is not finite" in err[0], err
    log = (experiment_dir / "out.log").read_text()
    assert "loss term 'main' is not finite at rollout step 0" in log
    assert "Traceback" in log  # the details are in the file, not on the screen
    assert (experiment_dir / "config.yaml").is_file()


def test_a_non_finite_loss_says_no_checkpoint_was_written(data, tmp_path):
    experiment_dir = tmp_path / "run"
    config = tiny_config(data, experiment_dir, ["stepper_training.loss.type=NaN"])
    with pytest.raises(NonFiniteError) as info:
        run_training(config)
    message = str(info.value)
    assert "loss term 'main' is not finite at rollout step 0, epoch 0" in message
    assert "no checkpoint was written in this run" in message
    assert "intact" not in message
    assert not (experiment_dir / "training_checkpoints" / "ckpt.tar").exists()


def test_non_finite_weights_are_never_checkpointed(data, tmp_path, monkeypatch):
    """A bad update that got past every check still never reaches a checkpoint."""
    experiment_dir = tmp_path / "run"
    checkpoints = experiment_dir / "training_checkpoints"
    real_step = Optimization.step_weights

    def step_then_poison(self):
        real_step(self)
        if self.optimizer_steps == 3:
            with torch.no_grad():
                self.parameters[0].fill_(float("nan"))

    monkeypatch.setattr(Optimization, "step_weights", step_then_poison)
    config = tiny_config(data, experiment_dir, ["checkpoint_every_n_steps=1"])
    with pytest.raises(NonFiniteError) as info:
        run_training(config)
    message = str(info.value)
    assert "trainable.stepper.module." in message
    assert "is not finite at optimizer step 3; ckpt.tar was not written" in message
    assert (
        f"the last checkpoint, {checkpoints / 'ckpt.tar'} at optimizer step 2, "
        "was written before this and is intact"
    ) in message
    state = load_checkpoint(checkpoints / "ckpt.tar")
    assert state["optimization"]["optimizer_steps"] == 2
    for value in state["trainable"]["stepper"]["module"].values():
        assert torch.isfinite(value).all()
