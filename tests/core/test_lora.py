"""LoRA adapters: start equal to the base, merge exactly, save plain weights."""

import pytest
import torch
from torch import nn

from fme.core.lora import (
    LoRAConfig,
    adapter_state_dict,
    apply_lora,
    has_lora,
    load_state_with_adapters,
    merge_lora,
    plain_state_dict,
)
from fme.core.optimization import OptimizationConfig


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv2d(3, 6, kernel_size=1)
        self.mix = nn.Conv2d(6, 6, kernel_size=3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(torch.tanh(self.encoder(x))))
        return self.head(h.mean(dim=(-2, -1)))


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


X = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(9))
CONFIG = LoRAConfig(rank=2, alpha=4.0, target_modules=["encoder", "head"])


def _randomize_adapters(net: nn.Module, seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator))


def test_adapted_network_starts_equal_and_freezes_the_base():
    net = _net()
    reference = net(X)
    assert apply_lora(net, CONFIG) == ["encoder", "head"]
    assert torch.equal(net(X), reference)
    trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    assert trainable == [
        "encoder.parametrizations.weight.0.lora_A",
        "encoder.parametrizations.weight.0.lora_B",
        "head.parametrizations.weight.0.lora_A",
        "head.parametrizations.weight.0.lora_B",
    ]


def test_update_is_scaled_low_rank_product():
    net = _net()
    base = net.head.weight.detach().clone()
    apply_lora(net, CONFIG)
    _randomize_adapters(net)
    update = net.head.parametrizations.weight[0]
    expected = base + (4.0 / 2) * update.lora_B @ update.lora_A
    torch.testing.assert_close(net.head.weight, expected)
    assert torch.linalg.matrix_rank(net.head.weight - base) == 2
    conv = net.encoder.parametrizations.weight[0]
    assert net.encoder.weight.shape == (6, 3, 1, 1)
    torch.testing.assert_close(
        (net.encoder.weight - net.encoder.parametrizations.weight.original)[..., 0, 0],
        2.0 * conv.lora_B @ conv.lora_A,
    )


def test_merge_equals_adapted_and_plain_state_needs_no_lora():
    net = _net()
    apply_lora(net, CONFIG)
    _randomize_adapters(net)
    adapted = net(X)
    plain = plain_state_dict(net)
    assert sorted(plain) == sorted(_net().state_dict())
    fresh = _net(seed=1)
    fresh.load_state_dict(plain)
    torch.testing.assert_close(fresh(X), adapted, rtol=1e-6, atol=1e-6)
    assert merge_lora(net) == 2
    assert not has_lora(net)
    assert sorted(net.state_dict()) == sorted(plain)
    torch.testing.assert_close(net(X), adapted, rtol=1e-6, atol=1e-6)


def test_adapter_state_round_trip_resumes_exactly():
    net = _net()
    apply_lora(net, CONFIG)
    _randomize_adapters(net)
    plain, adapters = plain_state_dict(net), adapter_state_dict(net)
    assert "head.parametrizations.weight.original" in adapters
    other = _net(seed=3)
    apply_lora(other, CONFIG)
    load_state_with_adapters(other, plain, adapters)
    for name, value in net.state_dict().items():
        assert torch.equal(other.state_dict()[name], value), name
    with pytest.raises(ValueError, match="holds none"):
        load_state_with_adapters(other, plain, None)
    with pytest.raises(ValueError, match="network has none"):
        load_state_with_adapters(_net(), plain, adapters)


def test_training_moves_only_adapters_and_trainable_parameters():
    net = _net()
    config = LoRAConfig(
        rank=1, target_modules=["head"], trainable_parameters=["*.bias"]
    )
    apply_lora(net, config)
    before = {k: v.clone() for k, v in adapter_state_dict(net).items()}
    before_bias = net.encoder.bias.detach().clone()
    before_mix = net.mix.weight.detach().clone()
    optimization = OptimizationConfig(optimizer_type="Adam", lr=0.05).build(
        net.parameters()
    )
    target = torch.randn(2, 2)
    for _ in range(3):
        optimization.accumulate_loss(((net(X) - target) ** 2).mean())
        optimization.step_weights()
    after = adapter_state_dict(net)
    assert torch.equal(
        after["head.parametrizations.weight.original"],
        before["head.parametrizations.weight.original"],
    )
    assert not torch.equal(
        after["head.parametrizations.weight.0.lora_B"],
        before["head.parametrizations.weight.0.lora_B"],
    )
    assert torch.equal(net.mix.weight, before_mix)
    assert not torch.equal(net.encoder.bias, before_bias)


def test_bad_targets_raise():
    with pytest.raises(ValueError, match="only 1x1"):
        apply_lora(_net(), LoRAConfig(rank=1, target_modules=["mix"]))
    with pytest.raises(
        ValueError, match=r"select no adaptable layer.*'encoder', 'mix', 'head'"
    ):
        apply_lora(_net(), LoRAConfig(rank=1, target_modules=["decoder*"]))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0, target_modules=["head"])
    with pytest.raises(ValueError, match="at least one"):
        LoRAConfig(rank=1, target_modules=[])
    net = _net()
    apply_lora(net, CONFIG)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(net, CONFIG)
