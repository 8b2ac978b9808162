import pytest
import torch

from fme.ace.models import ModuleSelector, recomputation
from fme.ace.models.pointwise import (
    PointwiseLinear,
    activation_then_linear,
    recomputed_then_linear,
)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_in, n_out", [(3, 2), (1, 5)])
def test_linear1x1_parameter_count(bias, n_in, n_out):
    module = ModuleSelector(type="Linear1x1", config={"bias": bias}).build(
        n_in_channels=n_in, n_out_channels=n_out, img_shape=(4, 8)
    )
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == n_in * n_out + (n_out if bias else 0)


def test_output_is_the_per_point_affine_map():
    torch.manual_seed(0)
    module = PointwiseLinear(3, 2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5]]))
        module.bias.copy_(torch.tensor([0.25, -3.0]))  # type: ignore[union-attr]
    x = torch.randn(4, 3, 5, 7)
    expected_0 = x[:, 0] + 2 * x[:, 1] + 0.25
    expected_1 = -x[:, 1] + 0.5 * x[:, 2] - 3.0
    out = module(x)
    torch.testing.assert_close(out[:, 0], expected_0)
    torch.testing.assert_close(out[:, 1], expected_1)


def test_gradients_are_the_analytic_ones():
    # L = sum(g * (W x + b)) => dL/dW = sum_{b,i,j} g x^T, dL/db = sum g
    module = PointwiseLinear(3, 2)
    x = torch.randn(4, 3, 5, 7)
    g = torch.randn(4, 2, 5, 7)
    (module(x) * g).sum().backward()
    torch.testing.assert_close(module.weight.grad, torch.einsum("bohw,bchw->oc", g, x))
    torch.testing.assert_close(module.bias.grad, g.sum(dim=(0, 2, 3)))  # type: ignore[union-attr]


def test_without_bias_zero_input_gives_zero():
    module = PointwiseLinear(3, 2, bias=False)
    assert module.bias is None
    assert torch.equal(module(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 2, 2, 2))


def test_init_gain_sets_output_variance():
    torch.manual_seed(0)
    module = PointwiseLinear(256, 256, init_gain=2.0)
    out = module(torch.randn(8, 256, 4, 4))
    assert abs(out.var().item() - 2.0) < 0.2


@pytest.mark.parametrize("bias", [True, False])
def test_forward_concat_is_forward_of_the_concatenation(bias):
    module = PointwiseLinear(5, 3, bias=bias, conv_shape=True)
    if module.bias is not None:
        torch.nn.init.normal_(module.bias)
    a = torch.randn(2, 2, 4, 6, requires_grad=True)
    b = torch.randn(2, 3, 4, 6, requires_grad=True)
    g = torch.randn(2, 3, 4, 6)
    split = module.forward_concat([a, b])
    grads_split = torch.autograd.grad((split * g).sum(), [a, b, module.weight])
    joint = module(torch.cat([a, b], dim=1))
    grads_joint = torch.autograd.grad((joint * g).sum(), [a, b, module.weight])
    torch.testing.assert_close(split, joint)
    for ours, expected in zip(grads_split, grads_joint, strict=True):
        torch.testing.assert_close(ours, expected)


def test_forward_concat_checks_the_channel_count():
    module = PointwiseLinear(5, 3)
    with pytest.raises(ValueError, match="expected 5"):
        module.forward_concat([torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)])


def _saved_bytes(fn, h, module) -> tuple[torch.Tensor, int]:
    """``fn(h)`` and the bytes of the non-parameter storages kept for backward."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(h)
    return out, sum(storages.values())


@pytest.mark.usefixtures("always_recompute")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [torch.nn.GELU, torch.nn.SiLU])
def test_activation_then_linear_equals_the_composition_and_stores_less(
    bias, activation
):
    torch.manual_seed(0)
    linear = PointwiseLinear(6, 3, bias=bias, conv_shape=True)
    act = activation()
    h = torch.randn(2, 6, 5, 7, requires_grad=True)
    plain, plain_bytes = _saved_bytes(lambda x: linear(act(x)), h, linear)
    lean, lean_bytes = _saved_bytes(
        lambda x: activation_then_linear(x, act, linear), h, linear
    )
    torch.testing.assert_close(lean, plain, rtol=0, atol=0)
    grad_out = torch.randn_like(plain)
    params = [h, *linear.parameters()]
    plain_grads = torch.autograd.grad(plain, params, grad_out)
    lean_grads = torch.autograd.grad(lean, params, grad_out)
    for a, b in zip(lean_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the composition stores h (for the activation) and act(h) (for the
    # linear); the lean one only h
    assert plain_bytes == 2 * h.numel() * 4
    assert lean_bytes == h.numel() * 4


def test_activation_then_linear_without_grad_or_input_grad():
    torch.manual_seed(0)
    linear = PointwiseLinear(4, 2)
    h = torch.randn(1, 4, 3, 5)  # no grad: only the weights get one
    out = activation_then_linear(h, torch.nn.GELU(), linear)
    expected = linear(torch.nn.functional.gelu(h))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    (grad_w,) = torch.autograd.grad(out.sum(), [linear.weight])
    (expected_w,) = torch.autograd.grad(expected.sum(), [linear.weight])
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(
            activation_then_linear(h, torch.nn.GELU(), linear), expected
        )


@pytest.mark.usefixtures("always_recompute")
@pytest.mark.parametrize("h_requires_grad", [True, False])
def test_recomputed_then_linear_gives_the_recomputed_modules_parameters_grads(
    h_requires_grad,
):
    # fn = norm(activation(.)) with affine parameters, as in an SFNO block:
    # its output is not stored, its parameters still get their gradients
    torch.manual_seed(0)
    linear = PointwiseLinear(6, 3, conv_shape=True)
    norm = torch.nn.InstanceNorm2d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)

    def fn(x):
        return norm(torch.nn.functional.gelu(x))

    h = torch.randn(2, 6, 5, 7, requires_grad=h_requires_grad)
    plain, plain_bytes = _saved_bytes(lambda x: linear(fn(x)), h, linear)
    lean, lean_bytes = _saved_bytes(
        lambda x: recomputed_then_linear(x, fn, linear, list(norm.parameters())),
        h,
        linear,
    )
    torch.testing.assert_close(lean, plain, rtol=0, atol=0)
    grad_out = torch.randn_like(plain)
    params = [*linear.parameters(), *norm.parameters()]
    if h_requires_grad:
        params.append(h)
    plain_grads = torch.autograd.grad(plain, params, grad_out)
    lean_grads = torch.autograd.grad(lean, params, grad_out)
    for a, b in zip(lean_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # only h stays: not gelu(h) nor the normalised field
    assert lean_bytes == h.numel() * 4 < plain_bytes


def test_recomputation_starts_at_the_threshold(monkeypatch):
    # below recomputation.RECOMPUTE_FROM_ELEMENTS the plain composition runs (it stores h and
    # act(h)); from it on only h is stored; the numbers are the same
    torch.manual_seed(0)
    linear = PointwiseLinear(6, 3, conv_shape=True)
    act = torch.nn.GELU()
    h = torch.randn(2, 6, 5, 7, requires_grad=True)
    results = {}
    for threshold in (h.numel() + 1, h.numel()):
        monkeypatch.setattr(recomputation, "RECOMPUTE_FROM_ELEMENTS", threshold)
        out, saved = _saved_bytes(
            lambda x: activation_then_linear(x, act, linear), h, linear
        )
        (grad,) = torch.autograd.grad(out.square().sum(), h)
        results[threshold] = (out, saved, grad)
    plain, recomputed = results[h.numel() + 1], results[h.numel()]
    assert plain[1] == 2 * h.numel() * 4
    assert recomputed[1] == h.numel() * 4
    torch.testing.assert_close(recomputed[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(recomputed[2], plain[2], rtol=1e-5, atol=1e-6)
