"""A frozen format-0 checkpoint still loads, predicts the same and fine-tunes."""

from pathlib import Path

import pytest
import torch
from stepper_builders import batch, build_stepper, build_train_stepper

from fme.ace.stepper.parameter_init import initialize_stepper
from fme.ace.stepper.stepper import Stepper
from fme.core.checkpoint import CHECKPOINT_FORMAT_VERSION, load_checkpoint
from fme.core.optimization import OptimizationConfig
from fme.core.parameter_init import ParameterInitConfig

DATA = Path(__file__).resolve().parent / "data"
V0 = DATA / "checkpoint_v0.tar"


def test_format_0_file_is_what_the_migration_describes():
    raw = torch.load(V0, weights_only=True)
    assert "format_version" not in raw and "trainable" not in raw
    assert sorted(raw["stepper"]["module"]) == ["module.bias", "module.weight"]
    assert "loss_normalizer" not in raw["stepper"]
    assert V0.stat().st_size < 10_000


def test_migrated_checkpoint_loads_and_predicts_the_same_numbers():
    state = load_checkpoint(V0)
    assert state["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert state["migrated_from_format"] == 0
    assert state["trainer"] == {"epoch": 3, "best_value": 0.5}
    assert "optimization" not in state  # format 0 cannot be resumed
    stepper_state = state["trainable"]["stepper"]
    assert stepper_state["loss_normalizer"] == stepper_state["normalizer"]
    stepper = Stepper.from_state(stepper_state)
    expected = torch.load(DATA / "checkpoint_v0_expected.pt", weights_only=True)
    with torch.no_grad():
        out = stepper.step.step(
            expected["input"], expected["next_forcing"], detach_uncorrected=True
        )
    assert sorted(out.output) == sorted(expected["output"]) == ["a", "b"]
    for name, value in expected["output"].items():
        torch.testing.assert_close(out.output[name], value, rtol=0, atol=0)


def test_format_0_checkpoint_can_be_fine_tuned():
    stepper = build_stepper(seed=0)
    loaded = initialize_stepper(stepper, ParameterInitConfig(weights_path=str(V0)))
    assert loaded == ["weight", "bias"]
    source = load_checkpoint(V0)["trainable"]["stepper"]["module"]
    assert torch.equal(stepper.base_module.weight, source["weight"])
    train = build_train_stepper(stepper)
    optimization = OptimizationConfig(optimizer_type="Adam", lr=0.05).build(
        stepper.module.parameters()
    )
    data = batch(seed=2)
    first = train.validate_on_batch(data).metrics["loss"]
    for _ in range(5):
        train.train_on_batch(data, optimization)
    assert train.validate_on_batch(data).metrics["loss"] < first
    assert not torch.equal(stepper.base_module.weight, source["weight"])


def test_mismatched_model_names_the_layers(tmp_path):
    stepper = build_stepper(builder="ConvNet")
    with pytest.raises(ValueError, match=r"missing from the checkpoint: \['convs\.0"):
        initialize_stepper(stepper, ParameterInitConfig(weights_path=str(V0)))
