"""Freezing by name pattern: no gradients, not optimised (DDP: see\n``test_data_parallel_fine_tuning.py``)."""

import pytest
import torch
from torch import nn

from fme.core.freezing import (
    FrozenParameterConfig,
    log_trainable_parameters,
    unfreeze_all,
)
from fme.core.optimization import OptimizationConfig


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _trainable(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def test_include_freezes_and_exclude_carves_out():
    net = _net()
    frozen = FrozenParameterConfig(include=["*"], exclude=["2.*"]).apply(net)
    assert frozen == ["0.weight", "0.bias"]
    assert _trainable(net) == ["2.weight", "2.bias"]
    unfreeze_all(net)
    assert len(_trainable(net)) == 4
    FrozenParameterConfig(include=["*.bias"]).apply(net)
    assert _trainable(net) == ["0.weight", "2.weight"]


def test_log_states_trainable_count(caplog):
    net = _net()
    FrozenParameterConfig(include=["0.*"]).apply(net)
    with caplog.at_level("INFO"):
        n = log_trainable_parameters(net, label="phase 0")
    assert n == 4 * 2 + 2
    assert "phase 0: training 10 of 26 parameters (16 frozen)" in caplog.text


def test_freezing_everything_or_matching_nothing_raises():
    with pytest.raises(ValueError, match="freezes every parameter"):
        FrozenParameterConfig(include=["*"]).apply(_net())
    with pytest.raises(
        ValueError, match=r"frozen_parameters\.include.*\['encoder\.\*'\]"
    ):
        FrozenParameterConfig(include=["encoder.*"]).apply(_net())
    with pytest.raises(ValueError, match="non-empty"):
        FrozenParameterConfig(include=[""])


def test_frozen_parameters_get_no_gradient_and_are_not_optimised():
    net = _net()
    FrozenParameterConfig(include=["0.*"]).apply(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimization = OptimizationConfig(optimizer_type="Adam", lr=0.1).build(
        net.parameters()
    )
    assert len(optimization.parameters) == 2
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    for _ in range(3):
        optimization.accumulate_loss(((net(x) - y) ** 2).mean())
        optimization.step_weights()
    after = net.state_dict()
    assert net[0].weight.grad is None
    assert torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])
