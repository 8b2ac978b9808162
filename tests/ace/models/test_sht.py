import pytest
import torch
import torch_harmonics as th

from fme.ace.models import sht as sht_module
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)

# (nlat, nlon, lmax, mmax): the third keeps the Nyquist order of an even nlon,
# the fourth has an odd nlon, the last truncates the spectrum.
CASES = [(8, 16, 8, 8), (9, 17, 9, 9), (6, 8, 6, 5), (7, 11, 7, 6), (16, 32, 6, 4)]
GRIDS = ["equiangular", "legendre-gauss"]


def transforms(nlat, nlon, lmax, mmax, grid):
    kwargs = dict(nlat=nlat, nlon=nlon, lmax=lmax, mmax=mmax, grid=grid)
    return SphericalHarmonicTransform(**kwargs), InverseSphericalHarmonicTransform(
        **kwargs
    )


def to_m_major(coeffs: torch.Tensor) -> torch.Tensor:
    """[b, c, l, m] complex -> [m, l, b * c * 2] real."""
    b, c, lmax, mmax = coeffs.shape
    return torch.view_as_real(coeffs).permute(3, 2, 0, 1, 4).reshape(mmax, lmax, -1)


def from_m_major(coeffs: torch.Tensor, batch: int, channels: int) -> torch.Tensor:
    mmax, lmax = coeffs.shape[:2]
    values = coeffs.reshape(mmax, lmax, batch, channels, 2).permute(2, 3, 1, 0, 4)
    return torch.view_as_complex(values.contiguous())


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("nlat, nlon, lmax, mmax", CASES)
def test_forward_matches_torch_harmonics(nlat, nlon, lmax, mmax, grid):
    sht, _ = transforms(nlat, nlon, lmax, mmax, grid)
    reference = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
    x = torch.randn(2, 3, nlat, nlon)
    ours = from_m_major(sht(x), 2, 3)
    torch.testing.assert_close(ours, reference(x), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("nlat, nlon, lmax, mmax", CASES)
def test_inverse_matches_torch_harmonics(nlat, nlon, lmax, mmax, grid):
    _, isht = transforms(nlat, nlon, lmax, mmax, grid)
    reference = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid).float()
    coeffs = torch.randn(2, 3, lmax, mmax, dtype=torch.complex64)
    # torch-harmonics zeroes the imaginary parts of m = 0 and Nyquist too
    expected = reference(coeffs.clone())
    ours = isht(to_m_major(coeffs), batch=2, channels=3)
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)


def test_imaginary_part_of_zonal_coefficients_is_ignored():
    _, isht = transforms(6, 8, 6, 5, "legendre-gauss")
    coeffs = torch.randn(1, 1, 6, 5, dtype=torch.complex64)
    changed = coeffs.clone()
    changed[..., 0] += 3.0j  # m = 0
    changed[..., 4] -= 2.0j  # Nyquist order of nlon = 8
    out = isht(to_m_major(coeffs), batch=1, channels=1)
    out_changed = isht(to_m_major(changed), batch=1, channels=1)
    torch.testing.assert_close(out_changed, out)


@pytest.mark.parametrize("grid, nlat", [("legendre-gauss", 8), ("equiangular", 15)])
def test_round_trip_of_band_limited_field(grid, nlat):
    # Products of degree < 2 lmax must be integrated exactly: n Legendre-Gauss
    # points are exact up to degree 2n - 1, n Clenshaw-Curtis points up to n - 1.
    nlon, lmax, mmax = 24, 8, 8
    sht, isht = transforms(nlat, nlon, lmax, mmax, grid)
    coeffs = torch.randn(2, 3, lmax, mmax, dtype=torch.complex64)
    coeffs[..., 0] = coeffs[..., 0].real  # a real field has real m = 0 modes
    coeffs = coeffs * torch.ones(lmax, mmax).tril()  # Y_l^m needs m <= l
    field = isht(to_m_major(coeffs), batch=2, channels=3)
    torch.testing.assert_close(
        from_m_major(sht(field), 2, 3), coeffs, atol=2e-5, rtol=0
    )


@pytest.mark.parametrize("nlat, nlon, lmax, mmax", [(6, 8, 6, 5), (5, 9, 5, 4)])
def test_gradients_match_finite_differences(nlat, nlon, lmax, mmax):
    sht, isht = transforms(nlat, nlon, lmax, mmax, "legendre-gauss")
    sht, isht = sht.double(), isht.double()
    x = torch.randn(2, 2, nlat, nlon, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sht, (x,))
    coeffs = torch.randn(mmax, lmax, 2 * 2 * 2, dtype=torch.float64)
    coeffs.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: isht(c, batch=2, channels=2), (coeffs,))


def test_gradient_matches_torch_harmonics_autograd():
    nlat, nlon, lmax, mmax = 8, 16, 8, 8
    sht, isht = transforms(nlat, nlon, lmax, mmax, "equiangular")
    ref_sht = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax).float()
    ref_isht = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax).float()
    x = torch.randn(2, 3, nlat, nlon, requires_grad=True)
    weight = torch.randn(2, 3, nlat, nlon)

    (isht(sht(x) * 1.5, batch=2, channels=3) * weight).sum().backward()
    assert x.grad is not None
    ours = x.grad.clone()
    x.grad = None
    (ref_isht(ref_sht(x) * 1.5) * weight).sum().backward()
    torch.testing.assert_close(ours, x.grad, atol=1e-5, rtol=1e-5)


def test_second_derivatives_match_finite_differences():
    sht, isht = transforms(5, 8, 5, 5, "legendre-gauss")
    sht, isht = sht.double(), isht.double()
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64, requires_grad=True)

    def nonlinear_round_trip(t: torch.Tensor) -> torch.Tensor:
        return isht(sht(t) * t.sum(), batch=1, channels=2)

    assert torch.autograd.gradgradcheck(nonlinear_round_trip, (x,))


@pytest.mark.parametrize(
    "grid, nlat, nlon, lmax",
    [
        ("equiangular", 64, 128, 32),
        ("legendre-gauss", 180, 360, 180),
    ],
)
def test_round_trip_and_torch_harmonics_at_model_sizes(grid, nlat, nlon, lmax):
    # The sizes the networks run at (ACE2's 1-degree grid last): the layout
    # changes between grid and spectral space must not lose precision there.
    mmax = lmax
    sht, isht = transforms(nlat, nlon, lmax, mmax, grid)
    generator = torch.Generator().manual_seed(0)
    coeffs = torch.randn(1, 2, lmax, mmax, dtype=torch.complex64, generator=generator)
    coeffs[..., 0] = coeffs[..., 0].real
    coeffs = coeffs * torch.ones(lmax, mmax).tril()
    field = isht(to_m_major(coeffs), batch=1, channels=2)
    reference = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
    torch.testing.assert_close(
        field, reference.float()(coeffs.clone()), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        from_m_major(sht(field), 1, 2), coeffs, atol=1e-4, rtol=0
    )


def test_transforms_with_many_columns_match_torch_harmonics():
    # 1024 fields of 64x128 take the one-product-per-order path of the Legendre
    # transforms (the path of ACE2's 384 channels at 1 degree); it must give
    # torch-harmonics' coefficients and fields, and their adjoints' gradients.
    nlat, nlon, lmax = 64, 128, 64
    batch, channels = 2, 512
    assert lmax * nlat * batch * channels * 2 >= sht_module._LOOP_OVER_ORDERS_MACS
    sht, isht = transforms(nlat, nlon, lmax, lmax, "equiangular")
    generator = torch.Generator().manual_seed(1)
    field = torch.randn(batch, channels, nlat, nlon, generator=generator)
    reference = th.RealSHT(nlat, nlon, lmax=lmax, mmax=lmax, grid="equiangular")
    expected = reference(field.double()).to(torch.complex64)
    field.requires_grad_(True)
    coeffs = sht(field)
    torch.testing.assert_close(
        from_m_major(coeffs, batch, channels), expected, atol=2e-4, rtol=1e-4
    )
    inverse = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=lmax, grid="equiangular")
    torch.testing.assert_close(
        isht(coeffs, batch=batch, channels=channels),
        inverse(expected.to(torch.complex128)).float(),
        atol=2e-4,
        rtol=1e-4,
    )
    # d/dx of <w, SHT(x)> is the adjoint of the analysis applied to w
    weights = torch.randn(coeffs.shape, generator=generator)
    (grad,) = torch.autograd.grad((coeffs * weights).sum(), field)
    field_64 = field.detach().double().requires_grad_(True)
    reference_coeffs = torch.view_as_real(reference.double()(field_64))
    weights_64 = from_m_major(weights, batch, channels)
    (expected_grad,) = torch.autograd.grad(
        (reference_coeffs * torch.view_as_real(weights_64).double()).sum(), field_64
    )
    torch.testing.assert_close(grad, expected_grad.float(), atol=2e-4, rtol=1e-4)


def test_tables_hold_no_subnormal_entries_and_vanish_below_the_order():
    # entries below 2^-100 (subnormal ones among them, which slow the products
    # down several-fold) are zero; l < m entries are zero as the per-order
    # products assume, and a table that breaks that is refused
    sht, isht = transforms(180, 360, 180, 180, "legendre-gauss")
    for table in (sht.table, isht.table, isht.adjoint_table):
        magnitude = table.abs()
        assert not ((magnitude > 0) & (magnitude < 2.0**-100)).any()
        below = torch.ones(table.shape[:2], dtype=torch.bool).tril(-1)
        assert not table[below].any()
    broken = torch.ones(3, 3, 4)
    with pytest.raises(ValueError, match="l < order m"):
        sht_module._legendre_table(broken)
