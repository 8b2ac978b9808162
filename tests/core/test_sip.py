import math

import pytest
import torch

from fme.core.sip import (
    SIPConfig,
    multi_step_sip_loss,
    sip_proxy_loss,
    sip_proxy_target,
)
from fme.core.sip_inverse import (
    gauss_newton_inverse,
    newton_inverse,
    per_sample_jacobian,
    saddle_free_newton_step,
)

DTYPE = torch.float64


def _linear_physics(matrix: torch.Tensor, offset: torch.Tensor):
    def physics(x: torch.Tensor) -> torch.Tensor:
        return x @ matrix.T + offset

    return physics


def _simple_physics(x: torch.Tensor) -> torch.Tensor:
    """The book's simple example, y = (x0, x1²)."""
    return torch.stack([x[:, 0], x[:, 1] ** 2], dim=-1)


def _simple_inverse(y_goal: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([y_goal[:, 0], y_goal[:, 1].sqrt() * x[:, 1].sign()], dim=-1)


@pytest.mark.parametrize("inverse", ["newton", "gauss_newton", "analytic"])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_linear_physics_update_is_exact_inverse_step(inverse: str, eta: float):
    torch.manual_seed(0)
    # badly scaled linear physics: the SIP step must not care
    matrix = torch.tensor(
        [[1e-2, 0.0, 0.0], [0.0, 1e2, 0.0], [0.3, 0.0, 1.0]], dtype=DTYPE
    )
    matrix = matrix @ torch.linalg.qr(torch.randn(3, 3, dtype=DTYPE))[0]
    offset = torch.randn(3, dtype=DTYPE)
    physics = _linear_physics(matrix, offset)
    x = torch.randn(5, 3, dtype=DTYPE)
    y_star = torch.randn(5, 3, dtype=DTYPE)
    inv = torch.linalg.inv(matrix)

    def analytic(y_goal: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (y_goal - offset) @ inv.T

    x_tilde = sip_proxy_target(
        x,
        y_star,
        physics=physics,
        inverse=inverse,
        eta=eta,
        analytic_inverse=analytic if inverse == "analytic" else None,
    )
    expected = x + eta * (y_star - physics(x)) @ inv.T
    torch.testing.assert_close(x_tilde, expected, rtol=1e-6, atol=1e-6)


def test_proxy_loss_gradient_is_sip_update():
    torch.manual_seed(1)
    x = torch.randn(4, 2, dtype=DTYPE, requires_grad=True)
    target = torch.randn(4, 2, dtype=DTYPE)
    sip_proxy_loss(x, target, norm="l2").backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, (x.detach() - target) / 4)
    x.grad = None
    sip_proxy_loss(x, target, norm="l1").backward()
    torch.testing.assert_close(x.grad, torch.sign(x.detach() - target) / 4)
    value = sip_proxy_loss(x.detach(), target, norm="l1")
    torch.testing.assert_close(value, (x.detach() - target).abs().sum() / 4)


def test_newton_of_quadratic_loss_lands_on_minimiser():
    torch.manual_seed(2)
    # overdetermined linear physics: ½‖Ax + b − y*‖² is quadratic in x, its
    # minimiser the least-squares solution; one Newton step must reach it.
    matrix = torch.randn(4, 2, dtype=DTYPE) * torch.tensor([[1e-2, 1e2]], dtype=DTYPE)
    offset = torch.randn(4, dtype=DTYPE)
    physics = _linear_physics(matrix, offset)
    x = torch.randn(3, 2, dtype=DTYPE)
    y_star = torch.randn(3, 4, dtype=DTYPE)
    x_new = newton_inverse(x, y_star, physics=physics)
    expected = torch.linalg.lstsq(matrix, (y_star - offset).T).solution.T
    torch.testing.assert_close(x_new, expected, rtol=1e-8, atol=1e-8)
    # and the gradient of the loss vanishes there
    x_req = x_new.clone().requires_grad_(True)
    (0.5 * (physics(x_req) - y_star).pow(2).sum()).backward()
    assert x_req.grad is not None
    assert x_req.grad.abs().max() < 1e-9


def test_newton_nonlinear_quadratic_loss_one_step():
    # P(x) = (x0 + x1, 2 x1) on a [B, 1, 2] input: a non-flat sample shape
    def physics(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[..., 0] + x[..., 1], 2 * x[..., 1]], dim=-1)

    x = torch.tensor([[[3.0, -1.0]], [[0.5, 2.0]]], dtype=DTYPE)
    y_star = torch.tensor([[[1.0, 4.0]], [[0.0, 0.0]]], dtype=DTYPE)
    x_new = newton_inverse(x, y_star, physics=physics)
    torch.testing.assert_close(
        x_new, torch.tensor([[[-1.0, 2.0]], [[0.0, 0.0]]], dtype=DTYPE)
    )


def test_saddle_free_step_flips_negative_curvature_and_zeroes_null_space():
    grad = torch.tensor([[1.0, 2.0, 3.0]], dtype=DTYPE)
    hessian = torch.diag(torch.tensor([2.0, -4.0, 0.0], dtype=DTYPE))[None]
    step = saddle_free_newton_step(grad, hessian)
    torch.testing.assert_close(step, torch.tensor([[-0.5, -0.5, 0.0]], dtype=DTYPE))
    capped = saddle_free_newton_step(grad, hessian, max_step=0.25)
    torch.testing.assert_close(capped, torch.tensor([[-0.25, -0.25, 0.0]], dtype=DTYPE))
    damped = saddle_free_newton_step(grad, hessian, damping=1.0)
    torch.testing.assert_close(
        damped, torch.tensor([[-1.0 / 3.0, -0.4, -3.0]], dtype=DTYPE)
    )


def test_saddle_free_step_is_rotation_equivariant():
    angle = 0.7
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
        dtype=DTYPE,
    )
    hessian = torch.diag(torch.tensor([3.0, -0.5], dtype=DTYPE))
    grad = torch.tensor([1.5, -1.0], dtype=DTYPE)
    step = saddle_free_newton_step(grad[None], hessian[None])
    rotated = saddle_free_newton_step((rot @ grad)[None], (rot @ hessian @ rot.T)[None])
    torch.testing.assert_close(rotated, (rot @ step[0])[None])


def test_gauss_newton_damping_and_rank_deficiency():
    # y = (x0 + x1, 0): rank one, pinv gives the minimum-norm step
    def physics(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0] + x[:, 1], 0.0 * x[:, 0]], dim=-1)

    x = torch.zeros(1, 2, dtype=DTYPE)
    y_goal = torch.tensor([[2.0, 5.0]], dtype=DTYPE)
    torch.testing.assert_close(
        gauss_newton_inverse(x, y_goal, physics=physics),
        torch.tensor([[1.0, 1.0]], dtype=DTYPE),
    )
    # (JᵀJ + λI)⁻¹ Jᵀ Δy with JᵀJ = [[1,1],[1,1]], λ = 1: Δx = (2/3, 2/3)
    torch.testing.assert_close(
        gauss_newton_inverse(x, y_goal, physics=physics, damping=1.0),
        torch.tensor([[2.0 / 3.0, 2.0 / 3.0]], dtype=DTYPE),
    )


def test_per_sample_jacobian():
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=DTYPE)
    jac = per_sample_jacobian(_simple_physics, x)
    expected = torch.tensor(
        [[[1.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, -2.0]]], dtype=DTYPE
    )
    torch.testing.assert_close(jac, expected)


def test_book_simple_example_inverse_simulator():
    # y = (x0, x1²), L = ½‖y‖² (y* = 0): the Newton step in y is Δy = −η y, so
    # y → 0.7 y per step with η = 0.3; the analytic inverse maps this to
    # x0 → 0.7 x0 and x1 → √0.7 x1.
    x = torch.tensor([[3.0, 3.0]], dtype=DTYPE)
    zero = torch.zeros(1, 2, dtype=DTYPE)
    for _ in range(10):
        x = sip_proxy_target(
            x,
            zero,
            physics=_simple_physics,
            inverse="analytic",
            eta=0.3,
            analytic_inverse=_simple_inverse,
        )
    expected = torch.tensor([[3 * 0.7**10, 3 * 0.7**5]], dtype=DTYPE)
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
    config = SIPConfig(inverse="analytic", eta=0.3)
    x = torch.tensor([[3.0, 3.0]], dtype=DTYPE)
    for _ in range(10):
        x = config.proxy_target(
            x, zero, physics=_simple_physics, analytic_inverse=_simple_inverse
        )
    torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)


def test_book_simple_example_sgd_on_proxy_loss_matches_inverse_steps():
    # One SGD step with learning rate 1 on the ½‖x − x̃‖² proxy moves x to x̃.
    # (plain SGD by hand: torch.optim's first use costs seconds of imports)
    x = torch.tensor([[3.0, 3.0]], dtype=DTYPE)
    config = SIPConfig(inverse="analytic", eta=0.3)
    zero = torch.zeros(1, 2, dtype=DTYPE)
    for _ in range(10):
        x.requires_grad_(True)
        loss = config.proxy_loss(
            x, zero, physics=_simple_physics, analytic_inverse=_simple_inverse
        )
        (grad,) = torch.autograd.grad(loss, x)
        x = (x - 1.0 * grad).detach()
    expected = torch.tensor([[3 * 0.7**10, 3 * 0.7**5]], dtype=DTYPE)
    torch.testing.assert_close(x.detach(), expected, rtol=1e-12, atol=1e-12)


def test_book_simple_example_gradient_descent():
    # GD with η = 0.01 on L = ‖y‖² = x0² + x1⁴ from (3, 3), ten steps
    x = torch.tensor([3.0, 3.0], dtype=DTYPE)
    for _ in range(10):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(_simple_physics(x[None]).pow(2).sum(), x)
        x = (x - 0.01 * grad).detach()
    torch.testing.assert_close(
        x.detach(), torch.tensor([2.451, 0.962], dtype=DTYPE), rtol=0, atol=1e-3
    )
    assert x[0].item() == pytest.approx(3 * 0.98**10, abs=1e-12)


def test_newton_on_simple_example_with_exact_hessian():
    # ½‖P(x) − g‖² with g = 0.7 P(x) for y = (x0, x1²): the x0 part is
    # quadratic (lands on 0.7 x0); for x1 the Newton step on ½(x1² − g1)² is
    # −(x1² − g1) 2 x1 / |6 x1² − 2 g1|.
    x = torch.tensor([[3.0, 3.0]], dtype=DTYPE)
    x_tilde = sip_proxy_target(
        x, torch.zeros(1, 2, dtype=DTYPE), physics=_simple_physics, eta=0.3
    )
    g1 = 0.7 * 9.0
    expected_x1 = 3.0 - (9.0 - g1) * 6.0 / abs(6 * 9.0 - 2 * g1)
    torch.testing.assert_close(
        x_tilde, torch.tensor([[2.1, expected_x1]], dtype=DTYPE), rtol=1e-12, atol=0
    )


def test_multi_step_loss_is_sum_of_steps():
    torch.manual_seed(3)
    config = SIPConfig(inverse="gauss_newton")
    physics_a = _linear_physics(torch.diag(torch.tensor([2.0, 0.5], dtype=DTYPE)), 0)
    physics_b = _simple_physics
    xs = [torch.randn(3, 2, dtype=DTYPE) + 2.0 for _ in range(2)]
    ys = [torch.randn(3, 2, dtype=DTYPE).abs() for _ in range(2)]
    total = multi_step_sip_loss(xs, ys, physics=[physics_a, physics_b], config=config)
    expected = config.proxy_loss(xs[0], ys[0], physics=physics_a) + config.proxy_loss(
        xs[1], ys[1], physics=physics_b
    )
    torch.testing.assert_close(total, expected)
    # a single physics is shared by all steps
    shared = multi_step_sip_loss(xs, ys, physics=physics_a, config=config)
    torch.testing.assert_close(
        shared,
        config.proxy_loss(xs[0], ys[0], physics=physics_a)
        + config.proxy_loss(xs[1], ys[1], physics=physics_a),
    )
    assert shared.item() > 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        multi_step_sip_loss(xs, ys[:1], physics=physics_a, config=config)


def test_proxy_target_is_detached_and_keeps_graph_out():
    x = torch.tensor([[1.0, 2.0]], dtype=DTYPE, requires_grad=True)
    x_tilde = sip_proxy_target(
        x * 2, torch.zeros(1, 2, dtype=DTYPE), physics=_simple_physics
    )
    assert not x_tilde.requires_grad
    assert x.grad is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"inverse": "adjoint"}, "sip.inverse must be one of"),
        ({"eta": 0.0}, r"sip.eta must be in \(0, 1\]"),
        ({"eta": 1.5}, r"sip.eta must be in \(0, 1\]"),
        ({"proxy_norm": "huber"}, r"sip.proxy_norm must be one of \['l2', 'l1'\]"),
        ({"damping": -1.0}, "sip.damping must be >= 0"),
        ({"inverse": "analytic", "damping": 0.1}, "damping only applies"),
        ({"max_step": 0.0}, "sip.max_step must be null or > 0"),
        ({"inverse": "gauss_newton", "max_step": 1.0}, "max_step only applies"),
    ],
)
def test_config_validation(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        SIPConfig(**kwargs)


def test_analytic_inverse_required_exactly_for_analytic():
    x = torch.ones(1, 2, dtype=DTYPE)
    with pytest.raises(ValueError, match="analytic_inverse must be given"):
        sip_proxy_target(x, x, physics=_simple_physics, inverse="analytic")
    with pytest.raises(ValueError, match="analytic_inverse must be given"):
        sip_proxy_target(
            x, x, physics=_simple_physics, analytic_inverse=_simple_inverse
        )


def test_shape_mismatch_is_reported():
    x = torch.ones(2, 2, dtype=DTYPE)
    with pytest.raises(ValueError, match="y_target has shape"):
        sip_proxy_target(x, torch.ones(2, 3, dtype=DTYPE), physics=_simple_physics)


def test_newton_with_constant_physics_does_not_move():
    def physics(x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)

    x = torch.tensor([[1.0, 2.0]], dtype=DTYPE)
    torch.testing.assert_close(
        newton_inverse(x, torch.zeros(1, 2, dtype=DTYPE), physics=physics), x
    )
    torch.testing.assert_close(
        gauss_newton_inverse(x, torch.zeros(1, 2, dtype=DTYPE), physics=physics), x
    )
