"""L-BFGS in ``Optimization``: closure steps, one clock tick per step, validation."""

import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.optimization import OptimizationConfig

# f(x) = 0.5 x^T A x - b^T x, minimum at A^-1 b
A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
B = torch.tensor([1.0, -1.0])
X_STAR = torch.linalg.solve(A, B)


def _quadratic_setup(**kwargs):
    x = torch.nn.Parameter(torch.zeros(2))
    config = from_dict_strict(
        OptimizationConfig,
        {
            "optimizer_type": "LBFGS",
            "lr": 1.0,
            "scheduler": {
                "type": "ExponentialLR",
                "kwargs": {"gamma": 0.5},
                "step_each_iteration": True,
            },
            **kwargs,
        },
    )
    return x, config.build([x])


def test_one_step_solves_a_quadratic_and_ticks_clocks_once():
    x, optimization = _quadratic_setup(kwargs={"max_iter": 10})
    assert optimization.optimizer.defaults["line_search_fn"] == "strong_wolfe"
    forwards = []

    def run_forward():
        forwards.append(x.detach().clone())
        optimization.accumulate_loss(0.5 * x @ A @ x - B @ x)

    optimization.step_with_closure(run_forward)
    torch.testing.assert_close(x.detach(), X_STAR, rtol=1e-5, atol=1e-6)
    assert optimization.last_closure_evaluations == len(forwards) > 2
    assert optimization.optimizer_steps == 1
    assert optimization.schedule.t == 1
    assert optimization.learning_rate == pytest.approx(0.5)
    assert x.grad is None
    with pytest.raises(RuntimeError, match="needs step_with_closure"):
        optimization.step_weights()


def test_returned_loss_is_averaged_over_ranks():
    x, _ = _quadratic_setup()
    seen = []

    def fake_mean(value):
        seen.append(float(value))
        return value * 0 + 7.0  # what "the other ranks" agreed on

    config = OptimizationConfig(optimizer_type="LBFGS", kwargs={"max_iter": 1})
    optimization = config.build([x], mean_over_ranks=fake_mean)
    optimization.step_with_closure(
        lambda: optimization.accumulate_loss(((x - 1.0) ** 2).sum())
    )
    assert seen[0] == pytest.approx(2.0)
    assert optimization.optimizer.state[x]["prev_loss"] == pytest.approx(7.0)


def test_state_round_trip_continues_identically():
    x1, opt1 = _quadratic_setup(kwargs={"max_iter": 2, "history_size": 3})

    def stepper(x, opt):
        return lambda: opt.accumulate_loss(((x - 1.0) ** 4).sum() + x.prod())

    opt1.step_with_closure(stepper(x1, opt1))
    x2, opt2 = _quadratic_setup(kwargs={"max_iter": 2, "history_size": 3})
    with torch.no_grad():
        x2.copy_(x1)
    opt2.load_state(opt1.get_state())
    for _ in range(2):
        opt1.step_with_closure(stepper(x1, opt1))
        opt2.step_with_closure(stepper(x2, opt2))
    assert torch.equal(x1, x2)
    assert opt2.optimizer_steps == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"use_gradient_accumulation": True}, "use_gradient_accumulation: false"),
        ({"max_grad_norm": 1.0}, "max_grad_norm is not supported with LBFGS"),
        ({"kwargs": {"momentum": 0.9}}, "kwargs.momentum is not an LBFGS option"),
        ({"kwargs": {"line_search_fn": "armijo"}}, "line_search_fn 'armijo'"),
        ({"kwargs": {"history_size": 0}}, "history_size must be >= 1"),
        ({"kwargs": {"max_iter": 2.5}}, "max_iter must be of type int"),
    ],
)
def test_lbfgs_config_errors_name_the_fix(extra, message):
    with pytest.raises(ConfigError, match=message):
        from_dict_strict(OptimizationConfig, {"optimizer_type": "LBFGS", **extra})


def test_fixed_step_without_line_search_is_allowed():
    x, optimization = _quadratic_setup(kwargs={"line_search_fn": None, "max_iter": 1})
    assert optimization.optimizer.defaults["line_search_fn"] is None
    optimization.step_with_closure(
        lambda: optimization.accumulate_loss(0.5 * x @ A @ x - B @ x)
    )
    assert optimization.last_closure_evaluations == 1
