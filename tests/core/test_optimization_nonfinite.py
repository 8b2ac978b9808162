"""A non-finite gradient or L-BFGS update stops before it reaches the weights."""

import pytest
import torch

from fme.core.nonfinite import NonFiniteError, first_nonfinite_tensor
from fme.core.optimization import OptimizationConfig


def _nan_gradient_loss(p: torch.Tensor) -> torch.Tensor:
    # finite value (0), infinite gradient: d sqrt(x)/dx at x = 0
    return torch.sqrt(p - p.detach()).sum() + (p * 0).sum()


@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
@pytest.mark.parametrize("accumulate", [False, True])
def test_a_non_finite_gradient_stops_before_the_optimiser_step(
    max_grad_norm, accumulate
):
    p = torch.nn.Parameter(torch.ones(3))
    optimization = OptimizationConfig(
        optimizer_type="Adam",
        lr=0.1,
        max_grad_norm=max_grad_norm,
        use_gradient_accumulation=accumulate,
    ).build([p])
    loss = _nan_gradient_loss(p)
    assert torch.isfinite(loss)
    optimization.accumulate_loss(loss)
    with pytest.raises(NonFiniteError, match=r"gradient norm is (nan|inf) .*not taken"):
        optimization.step_weights()
    assert torch.equal(p.detach(), torch.ones(3))
    assert optimization.optimizer_steps == 0
    assert optimization.optimizer.state_dict()["state"] == {}
    assert p.grad is None


def test_a_non_finite_lbfgs_update_is_undone_and_stops():
    p = torch.nn.Parameter(torch.ones(2))
    optimization = OptimizationConfig(
        optimizer_type="LBFGS",
        lr=1.0e30,  # the first step overflows p ** 4 in float32
        kwargs={"max_iter": 4, "line_search_fn": None},
    ).build([p])

    def run_forward():
        optimization.accumulate_loss((p**4).sum())

    with pytest.raises(NonFiniteError, match=r"L-BFGS update .* not finite"):
        optimization.step_with_closure(run_forward)
    assert torch.equal(p.detach(), torch.ones(2))
    assert optimization.optimizer_steps == 0


def test_first_nonfinite_tensor_names_the_path():
    state = {
        "a": {"w": torch.ones(2)},
        "b": [torch.zeros(1), torch.tensor([1.0, torch.inf])],
    }
    assert first_nonfinite_tensor(state) == "b.1"
    assert first_nonfinite_tensor({"step": torch.tensor(3)}) is None
