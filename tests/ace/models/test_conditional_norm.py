"""The fused conditional layer norm equals the plain expression, values and gradients."""

import pytest
import torch

from fme.ace.models.conditional_norm import ChannelLayerNorm, ConditionalLayerNorm


def _norm(affine: bool, dtype=torch.float32) -> ConditionalLayerNorm:
    torch.manual_seed(0)
    norm = ConditionalLayerNorm(
        5, noise_channels=3, grid=(4, 6), global_layer_norm=False, affine=affine
    ).to(dtype)
    for param in norm.parameters():  # zero/one at initialisation would hide errors
        torch.nn.init.normal_(param)
    return norm


def _plain(norm: ConditionalLayerNorm, x, z):
    """``layer_norm_c(x) * (1 + W_s z) + W_b z`` written out, via F.layer_norm."""
    inner = norm.norm
    assert isinstance(inner, ChannelLayerNorm)
    weight = inner.weight
    bias = inner.bias
    y = torch.nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps=inner.eps
    ).permute(0, 3, 1, 2)
    return y * (1.0 + norm.W_scale_2d(z)) + norm.W_bias_2d(z)


@pytest.mark.parametrize("affine", [False, True])
def test_values_and_gradients_equal_the_plain_expression(affine):
    norm = _norm(affine)
    x = (3.0 * torch.randn(2, 5, 4, 6) + 1.0).requires_grad_(True)
    z = torch.randn(2, 3, 4, 6, requires_grad=True)
    g = torch.randn(2, 5, 4, 6)
    params = list(norm.parameters())
    ours = norm(x, z)
    ours_grads = torch.autograd.grad((ours * g).sum(), [x, z, *params])
    expected = _plain(norm, x, z)
    expected_grads = torch.autograd.grad((expected * g).sum(), [x, z, *params])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_gradcheck_in_float64(affine):
    norm = _norm(affine, torch.float64)
    x = torch.randn(2, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, z: norm(x, z), (x, z))


def test_bfloat16_input_is_normalised_in_float32_and_returned_in_bfloat16():
    norm = _norm(True)
    x = torch.randn(2, 5, 4, 6)
    z = torch.randn(2, 3, 4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x.bfloat16(), z.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = _plain(norm, x.bfloat16().float(), z.bfloat16().float())
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)
