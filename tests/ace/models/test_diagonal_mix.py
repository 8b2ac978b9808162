import torch

from fme.ace.models.diagonal_mix import diagonal_product
from fme.ace.models.mode_major import mode_major_parameter


def diagonal_weight(n_in, n_out, n_l, weight_mmax, dtype=torch.float64):
    return mode_major_parameter(
        in_channels=n_in, out_channels=n_out, modes=[n_l, weight_mmax], std=0.5
    ).to(dtype)


def einsum_reference(spec, weight):
    # out[m, l, b, o] = sum_i spec[m, l, b, i] w[i, o, l, m], in ACE's layout
    n_m = spec.shape[0]
    w = torch.view_as_complex(weight.contiguous())[..., :n_m]
    return torch.einsum("mlbi,iolm->mlbo", spec, w)


def test_product_and_gradients_equal_an_einsum_of_aces_layout():
    # the weight keeps one order more than the spectrum has (ACE's mmax):
    # that order's gradient is zero, the others equal autograd's of an einsum
    torch.manual_seed(0)
    n_m, n_l, batch, n_in, n_out = 3, 4, 2, 3, 5
    weight = torch.nn.Parameter(diagonal_weight(n_in, n_out, n_l, n_m + 1))
    spec = torch.randn(n_m, n_l, batch, n_in, dtype=torch.complex128)
    spec.requires_grad_(True)
    out = diagonal_product(spec, weight)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [spec, weight], grad_out)

    spec_ref = spec.detach().clone().requires_grad_(True)
    weight_ref = weight.detach().clone().requires_grad_(True)
    ref = einsum_reference(spec_ref, weight_ref)
    ref_grads = torch.autograd.grad(ref, [spec_ref, weight_ref], grad_out)

    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, expected in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert grads[1][..., n_m, :].abs().max() == 0
    assert grads[1][..., :n_m, :].abs().min() > 0


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    weight = diagonal_weight(2, 3, 3, 3).detach().requires_grad_(True)
    spec = torch.randn(2, 3, 2, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(diagonal_product, (spec, weight))


def test_weight_gradient_has_the_parameters_layout_and_accumulates():
    # the gradient is written in the parameter's (mode-major) memory layout,
    # so accumulating over rollout steps and the optimiser need no copies
    torch.manual_seed(0)
    weight = torch.nn.Parameter(diagonal_weight(4, 4, 5, 6, dtype=torch.float32))
    assert not weight.is_contiguous()
    spec = torch.randn(5, 5, 2, 4, dtype=torch.complex64)
    for _ in range(2):
        diagonal_product(spec, weight).abs().square().sum().backward()
    assert weight.grad is not None
    assert weight.grad.stride() == weight.stride()
    once = torch.autograd.grad(
        einsum_reference(spec, weight).abs().square().sum(), weight
    )[0]
    torch.testing.assert_close(weight.grad, 2 * once, rtol=1e-5, atol=1e-5)
