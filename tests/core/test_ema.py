"""The EMA of weights: ACE's update rule in closed form, applied context, state."""

import pytest
import torch
from torch import nn

from fme.core.ema import EMAConfig


def _toy() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _closed_form(values: list[torch.Tensor], decays: list[float]) -> torch.Tensor:
    """ema_n = prod(d) p_0 + sum_k (1 - d_k) prod_{j > k} d_j p_k."""
    n = len(values) - 1
    total = values[0] * torch.tensor(decays[1:]).prod()
    for k in range(1, n + 1):
        later = torch.tensor(decays[k + 1 :]).prod() if k < n else torch.tensor(1.0)
        total = total + (1 - decays[k]) * later * values[k]
    return total


@pytest.mark.parametrize("faster", [True, False])
def test_ema_after_n_steps_is_the_closed_form(faster):
    model = _toy()
    decay = 0.9
    ema = EMAConfig(decay=decay, faster_decay_at_start=faster).build(model)
    values = [model.weight.detach().clone()]
    decays = [0.0]
    for t in range(1, 8):
        with torch.no_grad():
            model.weight.copy_(torch.randn(2, 3))  # an "optimiser step"
        values.append(model.weight.detach().clone())
        decays.append(min(decay, (1 + t) / (10 + t)) if faster else decay)
        ema.update()
    assert ema.num_updates == 7
    torch.testing.assert_close(
        ema.params["weight"], _closed_form(values, decays), rtol=1e-6, atol=1e-6
    )
    # ACE's first decays: 2/11, 3/12, ... until they exceed `decay`
    if faster:
        assert decays[1] == pytest.approx(2 / 11)


def test_applied_swaps_the_average_in_and_restores():
    model = _toy()
    ema = EMAConfig(decay=0.5, faster_decay_at_start=False).build(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    trained = model.weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(model.weight, start + 0.5)
    assert torch.equal(model.weight, trained)


def test_state_round_trip_continues_identically():
    model = _toy()
    ema = EMAConfig(decay=0.8).build(model)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.1)
        ema.update()
    state = ema.get_state()
    other = EMAConfig(decay=0.8).build(_toy())
    other.module = model
    other.load_state(state)
    for tracker in (ema, other):
        with torch.no_grad():
            model.weight.add_(0.1) if tracker is ema else None
        tracker.update()
    assert other.num_updates == ema.num_updates == 4
    torch.testing.assert_close(other.params["weight"], ema.params["weight"])


def test_mismatched_settings_and_missing_weights_are_errors():
    model = _toy()
    state = EMAConfig(decay=0.8).build(model).get_state()
    with pytest.raises(ValueError, match="decay=0.8"):
        EMAConfig(decay=0.9).build(model).load_state(state)
    EMAConfig(decay=0.9).build(model).load_state(state, keep_settings=True)
    with pytest.raises(ValueError, match="no averaged weights"):
        EMAConfig(decay=0.8).build(model).load_state({"decay": 0.8})
    with pytest.raises(ValueError, match="ema.decay"):
        EMAConfig(decay=1.5)
