"""Faults during a run: kills between checkpoint writes, stale files, bad starts."""

import pytest
import torch
from train_run_builders import tiny_config, tiny_data

from fme.ace.train.main import run_training
from fme.core import trainer as trainer_module
from fme.core.checkpoint import load_checkpoint


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
