import pytest
import torch
from torch import nn

from fme.core.parameter_init import (
    ParameterInitConfig,
    describe_differences,
    load_parameters,
)


def _net(hidden: int = 4, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def test_strict_load_with_one_excluded_layer_keeps_its_fresh_init():
    source = _net(seed=1).state_dict()
    target = _net(seed=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    loaded = load_parameters(target, source, exclude_parameters=["2.*"])
    assert loaded == ["0.weight", "0.bias"]
    state = target.state_dict()
    assert torch.equal(state["0.weight"], source["0.weight"])
    assert torch.equal(state["0.bias"], source["0.bias"])
    assert torch.equal(state["2.weight"], fresh["2.weight"])
    assert torch.equal(state["2.bias"], fresh["2.bias"])


def test_data_parallel_prefix_is_stripped():
    source = {f"module.{k}": v for k, v in _net(seed=1).state_dict().items()}
    target = _net(seed=2)
    load_parameters(target, source, exclude_parameters=[])
    assert torch.equal(target[0].weight, source["module.0.weight"])


def test_mismatch_error_lists_every_name_and_shape():
    source = _net(hidden=4).state_dict()
    source["extra.weight"] = torch.zeros(1)
    del source["2.bias"]
    target = _net(hidden=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_parameters(target, source, exclude_parameters=[])
    message = str(info.value)
    assert "missing from the checkpoint: ['2.bias']" in message
    assert "not in the model: ['extra.weight']" in message
    assert "0.weight (checkpoint (4, 3), model (5, 3))" in message
    assert "2.weight (checkpoint (2, 4), model (2, 5))" in message
    assert "exclude_parameters" in message
    for name, value in target.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[name])
    # excluding the mismatched names makes it load
    load_parameters(target, source, exclude_parameters=["0.*", "2.*", "extra.*"])


def test_exclude_pattern_matching_nothing_raises():
    with pytest.raises(
        ValueError, match=r"exclude_parameters: pattern\(s\) \['decoder\.\*'\]"
    ):
        load_parameters(_net(), _net().state_dict(), exclude_parameters=["decoder.*"])


def test_exclude_without_weights_path_is_a_config_error():
    with pytest.raises(
        ValueError, match="needs stepper_training.parameter_init.weights_path"
    ):
        ParameterInitConfig(exclude_parameters=["decoder.*"])


def test_describe_differences_uses_dotted_paths():
    old = {"means": {"a": 1.0, "b": 2.0}, "cfg": {"embed_dim": 32, "gone": 1}}
    new = {"means": {"a": 1.0, "b": 2.5}, "cfg": {"embed_dim": 64, "added": [1]}}
    assert describe_differences(old, new) == [
        "means.b: 2.0 -> 2.5",
        "cfg.embed_dim: 32 -> 64",
        "cfg.gone: 1 -> (absent)",
        "cfg.added: (absent) -> [1]",
    ]
    assert describe_differences(old, old) == []
    many_old = {str(i): i for i in range(30)}
    many_new = {str(i): -i - 1 for i in range(30)}
    lines = describe_differences(many_old, many_new, max_items=5)
    assert len(lines) == 6 and lines[-1] == "... and 25 more"
