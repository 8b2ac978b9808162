"""Fine-tuning a stepper from a training checkpoint."""

import dataclasses
import logging

import pytest
import torch
from stepper_builders import MEANS, STDS, dataset_info, stepper_config

from fme.ace.stepper.parameter_init import initialize_stepper
from fme.core.checkpoint import save_checkpoint
from fme.core.config_loading import from_dict_strict, to_dict
from fme.core.parameter_init import ParameterInitConfig


def _stepper(seed: int, *, means=None, hidden: int = 4):
    config = to_dict(stepper_config(builder="ConvNet"))
    step = config["step"]["config"]
    step["builder"]["config"] = {"hidden_channels": hidden, "num_layers": 2}
    step["normalization"]["network"]["means"] = means or MEANS
    step["normalization"]["network"]["stds"] = STDS
    torch.manual_seed(seed)
    typed = from_dict_strict(type(stepper_config()), config)
    return typed.build(dataset_info=dataset_info())


def _save(stepper, path):
    save_checkpoint({"trainable": {"stepper": stepper.get_state()}}, path)
    return str(path)


def test_one_excluded_layer_keeps_fresh_weights_and_differences_are_logged(
    tmp_path, caplog
):
    pretrained = _stepper(seed=1)
    path = _save(pretrained, tmp_path / "ckpt.tar")
    fresh = _stepper(seed=2, means={**MEANS, "a": 1.5})
    fresh_last = {
        k: v.clone()
        for k, v in fresh.base_module.state_dict().items()
        if "convs.1" in k
    }
    config = ParameterInitConfig(weights_path=path, exclude_parameters=["convs.1.*"])
    with caplog.at_level(logging.INFO):
        loaded = initialize_stepper(fresh, config)
    assert loaded == ["convs.0.weight", "convs.0.bias"]
    source = pretrained.base_module.state_dict()
    state = fresh.base_module.state_dict()
    assert torch.equal(state["convs.0.weight"], source["convs.0.weight"])
    for name, value in fresh_last.items():
        assert torch.equal(state[name], value)
    assert "network normalisation differs" in caplog.text
    assert "means.a: 1.0 -> 1.5" in caplog.text
    assert "step.config.normalization.network.means.a: 1.0 -> 1.5" in caplog.text


def test_shape_mismatch_lists_layers_and_the_fix(tmp_path):
    path = _save(_stepper(seed=1, hidden=4), tmp_path / "ckpt.tar")
    with pytest.raises(ValueError) as info:
        initialize_stepper(
            _stepper(seed=2, hidden=6), ParameterInitConfig(weights_path=path)
        )
    message = str(info.value)
    assert "convs.0.weight (checkpoint (4, 3, 3, 3), model (6, 3, 3, 3))" in message
    assert "convs.1.weight (checkpoint (2, 4, 3, 3), model (2, 6, 3, 3))" in message
    assert "exclude_parameters" in message


def test_not_a_training_checkpoint(tmp_path):
    save_checkpoint({"weights": torch.zeros(1)}, tmp_path / "other.tar")
    with pytest.raises(ValueError, match="holds no trainable.stepper"):
        initialize_stepper(
            _stepper(seed=0),
            dataclasses.replace(
                ParameterInitConfig(), weights_path=str(tmp_path / "other.tar")
            ),
        )
