"""ACE's inline-inference ``weight``: the weighted error selects ``best_inference_ckpt.tar``."""

import json

import pytest
from train_run_builders import tiny_config, tiny_data

from fme.ace.inference.inline import InlineInferenceConfig
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import ConfigError, from_dict_strict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_data(tmp_path_factory.mktemp("shallow_water"))


def _block(data, name: str, weight: float, extra: str = "") -> str:
    return (
        "{name: " + name + ", weight: " + str(weight) + ", loader: {dataset: "
        "{data_path: " + str(data / "validation") + "}, start_indices: {first: 0, "
        "n_initial_conditions: 2, interval: 3}}, n_forward_steps: 3, "
        "forward_steps_in_memory: 2" + extra + "}"
    )


def test_weighted_error_selects_best_inference_checkpoint(data, tmp_path):
    experiment_dir = tmp_path / "run"
    blocks = [_block(data, "a", 1.0), _block(data, "b", 0.5), _block(data, "c", 0)]
    config = tiny_config(
        data, experiment_dir, ["inference=[" + ", ".join(blocks) + "]", "max_epochs=3"]
    )
    run_training(config)
    records = [
        json.loads(line)
        for line in (experiment_dir / "metrics.jsonl").read_text().splitlines()
    ]
    epochs = [r for r in records if "inference_error" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    key = "time_mean_norm/rmse/channel_mean"
    for record in epochs:
        # block c (weight 0) is logged but not part of the error
        assert record[f"c/{key}"] > 0
        expected = 1.0 * record[f"a/{key}"] + 0.5 * record[f"b/{key}"]
        assert record["inference_error"] == pytest.approx(expected, rel=1e-12)
    running_best = [
        min(r["inference_error"] for r in epochs[: i + 1]) for i in range(3)
    ]
    assert [r["best_inference_error"] for r in epochs] == running_best
    checkpoints = experiment_dir / "training_checkpoints"
    best = load_checkpoint(checkpoints / "best_inference_ckpt.tar")
    best_epoch = min(epochs, key=lambda r: r["inference_error"])["epoch"]
    assert best["trainer"]["epoch"] == best_epoch
    assert best["trainer"]["best_inference_value"] == pytest.approx(running_best[-1])
    last = load_checkpoint(checkpoints / "ckpt.tar")
    assert last["trainer"]["best_inference_value"] == pytest.approx(running_best[-1])


def test_all_zero_weights_write_no_best_inference_checkpoint(data, tmp_path):
    experiment_dir = tmp_path / "run"
    config = tiny_config(
        data, experiment_dir, ["inference=" + _block(data, "a", 0), "max_epochs=1"]
    )
    run_training(config)
    assert not (
        experiment_dir / "training_checkpoints/best_inference_ckpt.tar"
    ).exists()
    text = (experiment_dir / "metrics.jsonl").read_text()
    assert "a/time_mean_norm/rmse/channel_mean" in text
    assert "inference_error" not in text


def test_weight_needs_time_mean_norm(data):
    block = {
        "loader": {"dataset": {"data_path": str(data / "validation")}},
        "aggregator": {"time_mean_norm": {"target": "norm", "enabled": False}},
    }
    with pytest.raises(ConfigError, match="time_mean_norm must be enabled when"):
        from_dict_strict(InlineInferenceConfig, block)
    block["weight"] = 0.0
    assert from_dict_strict(InlineInferenceConfig, block).weight == 0.0


def test_weighted_blocks_must_share_their_epochs(data, tmp_path):
    blocks = [_block(data, "a", 1.0), _block(data, "b", 1.0, ", every_n_epochs: 2")]
    with pytest.raises(ValueError, match="weight > 0 must run after the same epochs"):
        tiny_config(
            data, tmp_path, ["inference=[" + ", ".join(blocks) + "]", "max_epochs=2"]
        )
    blocks[1] = _block(data, "b", 0, ", every_n_epochs: 2")
    tiny_config(data, tmp_path, ["inference=[" + ", ".join(blocks) + "]"])
