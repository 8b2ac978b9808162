"""The evaluator's ``seed`` (ACE's key) makes a stochastic network's rollout reproducible."""

import pytest
import torch
from train_run_builders import tiny_config, tiny_data

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import run_evaluation
from fme.ace.train.main import run_training
from fme.core.config_loading import from_dict_strict


@pytest.fixture(scope="module")
def noisy_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    data = tiny_data(root)
    noise = ["stepper.step.config.builder.config.noise_channels=2", "max_epochs=1"]
    run_training(tiny_config(data, root / "train", noise))
    return data, root / "train" / "training_checkpoints" / "ckpt.tar"


def _evaluate(data, checkpoint, out, seed) -> dict[str, float]:
    config = from_dict_strict(
        EvaluatorConfig,
        {
            "experiment_dir": str(out),
            "checkpoint_path": str(checkpoint),
            "n_forward_steps": 3,
            "forward_steps_in_memory": 3,
            "logging": {"log_to_screen": False},
            "seed": seed,
            "data_writer": {"save_prediction_files": False},
            "loader": {
                "dataset": {"data_path": str(data / "validation")},
                "start_indices": {"first": 0, "n_initial_conditions": 2},
            },
        },
    )
    return run_evaluation(config)


def test_seeded_evaluations_of_a_noisy_network_agree(noisy_checkpoint, tmp_path):
    data, checkpoint = noisy_checkpoint
    runs = []
    for i, (prior, seed) in enumerate([(1, 7), (2, 7), (2, None)]):
        torch.manual_seed(prior)  # whatever the process drew before
        runs.append(_evaluate(data, checkpoint, tmp_path / f"run_{i}", seed))
    assert runs[0] == pytest.approx(runs[1], rel=0, abs=0, nan_ok=True)
    # the noise matters: unseeded, the rollout follows the earlier draws
    assert runs[2]["rmse/geopotential"] != runs[1]["rmse/geopotential"]
