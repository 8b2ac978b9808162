from typing import Any

import pytest
import torch
import torch_harmonics as th

from fme.ace.models.sfno import SpectralConvS2, SphericalFourierNeuralOperatorNet
from fme.ace.models.sfno_config import SphericalFourierNeuralOperatorConfig
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)

SMALL = {"embed_dim": 8, "num_layers": 2}


def build(
    img_shape=(8, 16), n_in=3, n_out=2, **overrides: Any
) -> SphericalFourierNeuralOperatorNet:
    config = SphericalFourierNeuralOperatorConfig(**{**SMALL, **overrides})
    module = config.build(n_in_channels=n_in, n_out_channels=n_out, img_shape=img_shape)
    assert isinstance(module, SphericalFourierNeuralOperatorNet)
    return module


@pytest.mark.parametrize(
    "img_shape, overrides",
    [
        ((8, 16), {}),
        ((16, 32), {"operator_type": "diagonal"}),
        ((7, 12), {"data_grid": "equiangular"}),
        ((9, 18), {"scale_factor": 2, "num_layers": 3}),
        ((8, 16), {"hard_thresholding_fraction": 0.5, "use_mlp": False}),
        ((8, 16), {"normalization_layer": "none", "activation_function": "silu"}),
        ((8, 16), {"normalization_layer": "none", "num_layers": 12}),
        ((8, 16), {"normalization_layer": "none", "num_layers": 12, "use_mlp": False}),
        ((8, 16), {"encoder_layers": 0, "big_skip": False, "pos_embed": False}),
        ((8, 16), {"num_layers": 1, "encoder_layers": 2, "noise_channels": 2}),
    ],
)
def test_output_shape_and_scale(img_shape, overrides):
    torch.manual_seed(0)
    module = build(img_shape, n_in=3, n_out=5, **overrides)
    out = module(torch.randn(4, 3, *img_shape))
    assert out.shape == (4, 5, *img_shape)
    assert torch.isfinite(out).all()
    # variance-preserving init: unit-variance inputs give an O(1) output
    assert 0.2 < out.std().item() < 5.0


def test_spectral_weight_is_named_and_shaped_as_in_ace():
    module = build((8, 16), embed_dim=4, num_layers=3, operator_type="dhconv")
    params = dict(module.named_parameters())
    for i in range(3):
        # (in, out, lmax, (real, imag)), lmax = nlat
        assert params[f"blocks.{i}.filter.filter.weight"].shape == (4, 4, 8, 2)
        assert params[f"blocks.{i}.filter.filter.bias"].shape == (1, 4, 1, 1)
    diagonal = build((8, 16), embed_dim=4, operator_type="diagonal")
    weight = dict(diagonal.named_parameters())["blocks.0.filter.filter.weight"]
    # ACE keeps mmax = nlon // 2 + 1 = 9 orders, one more than lmax
    assert weight.shape == (4, 4, 8, 9, 2)


def spherical_harmonic(l_deg: int, m_ord: int, amplitude: torch.Tensor, grid: str):
    """Fields ``amplitude[c] * Y_l^m`` (complex amplitude) on an 8x16 grid."""
    coeffs = torch.zeros(1, amplitude.numel(), 8, 8, dtype=torch.complex64)
    coeffs[0, :, l_deg, m_ord] = amplitude
    return th.InverseRealSHT(8, 16, lmax=8, mmax=8, grid=grid).float()(coeffs)


@pytest.mark.parametrize("operator_type", ["dhconv", "diagonal"])
@pytest.mark.parametrize("l_deg, m_ord", [(3, 2), (5, 5), (2, 0), (7, 1)])
def test_spectral_conv_maps_a_spherical_harmonic_to_itself(operator_type, l_deg, m_ord):
    grid = "legendre-gauss"  # exact quadrature: the check is to float precision
    conv = SpectralConvS2(
        forward_transform=SphericalHarmonicTransform(
            nlat=8, nlon=16, lmax=8, mmax=8, grid=grid
        ),
        inverse_transform=InverseSphericalHarmonicTransform(
            nlat=8, nlon=16, lmax=8, mmax=8, grid=grid
        ),
        in_channels=3,
        out_channels=2,
        operator_type=operator_type,
    )
    torch.manual_seed(1)
    amplitude = torch.randn(3, dtype=torch.complex64)
    if m_ord == 0:
        amplitude = amplitude.real.to(torch.complex64)
    out, _ = conv(spherical_harmonic(l_deg, m_ord, amplitude, grid))

    weight = torch.view_as_complex(conv.weight.detach().contiguous())
    if operator_type == "dhconv":  # (in, out, l)
        weight = weight[:, :, l_deg]
    else:  # (in, out, l, m)
        weight = weight[:, :, l_deg, m_ord]
    expected_amplitude = torch.einsum("c,co->o", amplitude, weight)
    if m_ord == 0:  # a real field has no imaginary zonal part
        expected_amplitude = expected_amplitude.real.to(torch.complex64)
    out_coeffs = th.RealSHT(8, 16, lmax=8, mmax=8, grid=grid).float()(out)[0]
    expected = torch.zeros(2, 8, 8, dtype=torch.complex64)
    expected[:, l_deg, m_ord] = expected_amplitude
    torch.testing.assert_close(out_coeffs, expected, atol=1e-5, rtol=1e-5)
    # and the field itself is that multiple of Y_l^m
    torch.testing.assert_close(
        out,
        spherical_harmonic(l_deg, m_ord, expected_amplitude, grid),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "overrides, shift",
    [
        ({}, 3),
        ({"operator_type": "diagonal"}, 5),
        ({"data_grid": "equiangular", "normalization_layer": "none"}, 1),
        ({"scale_factor": 2, "num_layers": 3}, 4),
    ],
)
def test_commutes_with_longitude_shifts_without_position_embedding(overrides, shift):
    torch.manual_seed(0)
    module = build((8, 16), pos_embed=False, **overrides)
    x = torch.randn(2, 3, 8, 16)
    shifted = module(torch.roll(x, shift, dims=-1))
    torch.testing.assert_close(
        shifted, torch.roll(module(x), shift, dims=-1), atol=1e-5, rtol=1e-4
    )


def test_position_embedding_breaks_longitude_shift_symmetry():
    torch.manual_seed(0)
    module = build((8, 16), pos_embed=True)
    with torch.no_grad():
        module.pos_embed.normal_()  # type: ignore[union-attr]
    x = torch.randn(2, 3, 8, 16)
    diff = module(torch.roll(x, 3, dims=-1)) - torch.roll(module(x), 3, dims=-1)
    assert diff.abs().max() > 1e-2


def test_zonally_symmetric_input_gives_zonally_symmetric_output():
    torch.manual_seed(0)
    module = build((8, 16), pos_embed=False)
    x = torch.randn(2, 3, 8, 1).expand(2, 3, 8, 16)
    out = module(x)
    assert out.std(dim=-1).max() < 1e-5
    assert out.std(dim=-2).min() > 1e-3  # but it does vary with latitude


@pytest.mark.parametrize(
    "overrides",
    [{}, {"operator_type": "diagonal", "scale_factor": 2}, {"noise_channels": 1}],
)
def test_gradients_reach_every_parameter(overrides):
    torch.manual_seed(0)
    module = build((8, 16), **overrides)
    module(torch.randn(2, 3, 8, 16)).square().mean().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_noise_channels_make_the_output_random():
    module = build((8, 16), noise_channels=2)
    x = torch.randn(2, 3, 8, 16)
    first, second = module(x), module(x)
    assert (first - second).abs().max() > 1e-3
    torch.manual_seed(5)
    again = module(x)
    torch.manual_seed(5)
    torch.testing.assert_close(module(x), again)


def test_without_noise_the_output_is_deterministic():
    module = build((8, 16))
    x = torch.randn(2, 3, 8, 16)
    assert torch.equal(module(x), module(x))


def test_wrong_input_grid_is_rejected():
    module = build((8, 16))
    with pytest.raises(ValueError, match="8, 16"):
        module(torch.randn(1, 3, 8, 12))


def test_grid_too_small_for_scale_factor_is_rejected():
    with pytest.raises(ValueError, match="scale_factor=4"):
        build((2, 4), scale_factor=4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("embed_dim", 0),
        ("num_layers", 0),
        ("filter_type", "non-linear"),
        ("operator_type", "block-diagonal"),
        ("scale_factor", 0),
        ("hard_thresholding_fraction", 0.0),
        ("hard_thresholding_fraction", 1.5),
        ("mlp_ratio", 0.0),
        ("activation_function", "tanh"),
        ("encoder_layers", -1),
        ("normalization_layer", "batch_norm"),
        ("data_grid", "healpix"),
        ("spectral_transform", "fft"),
        ("factorization", "cp"),
        ("separable", True),
        ("internal_grid", "gaussian"),
        ("noise_channels", -1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SphericalFourierNeuralOperatorConfig(**{field: value})


def test_input_gradient_matches_finite_differences_in_double_precision():
    torch.manual_seed(0)
    # scale_factor=2 also exercises the resampled skip connections
    module = build((4, 8), n_in=1, n_out=1, embed_dim=2, scale_factor=2).double()
    x = torch.randn(1, 1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_runs_under_bfloat16_autocast():
    torch.manual_seed(0)
    module = build((8, 16))
    x = torch.randn(2, 3, 8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    assert out.dtype == torch.bfloat16
    reference = module(x)
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


@pytest.mark.usefixtures("always_recompute")
@pytest.mark.parametrize("normalization_layer", ["instance_norm", "layer_norm"])
def test_lean_block_gives_the_gradients_of_the_plain_block(normalization_layer):
    # A block's MLP input is recomputed in backward (not stored); every
    # parameter's gradient must equal the one of the plain composition, which
    # the blocks run when their MLP is checkpointed.
    torch.manual_seed(0)
    module = build((8, 16), normalization_layer=normalization_layer).double()
    for block in module.blocks:
        with torch.no_grad():  # affine norms away from their initial values
            for param in block.norm1.parameters():
                param.add_(0.3 * torch.randn_like(param))
    x = torch.randn(2, 3, 8, 16, dtype=torch.float64)

    def gradients(checkpointed: bool) -> list[torch.Tensor]:
        for block in module.blocks:
            block.mlp.checkpointed = checkpointed
        module.zero_grad()
        module(x).square().mean().backward()
        return [p.grad.clone() for p in module.parameters()]

    for lean, plain in zip(gradients(False), gradients(True), strict=True):
        torch.testing.assert_close(lean, plain, rtol=1e-10, atol=1e-12)
