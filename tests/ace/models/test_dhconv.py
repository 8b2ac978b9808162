import pytest
import torch
from torch.func import functional_call

from fme.ace.models import recomputation
from fme.ace.models.sfno import SpectralConvS2
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)


def dhconv(nlat=6, nlon=12, channels=(3, 2)) -> SpectralConvS2:
    kwargs = dict(nlat=nlat, nlon=nlon, lmax=nlat, mmax=nlat, grid="legendre-gauss")
    conv = SpectralConvS2(
        forward_transform=SphericalHarmonicTransform(**kwargs),
        inverse_transform=InverseSphericalHarmonicTransform(**kwargs),
        in_channels=channels[0],
        out_channels=channels[1],
        operator_type="dhconv",
    )
    return conv


def _kept_storages(conv, x) -> tuple[tuple[torch.Tensor, torch.Tensor], set[int]]:
    """``conv(x)`` and the storages (not parameters, tables or small tensors)
    that autograd keeps for its backward."""
    skipped = {p.untyped_storage().data_ptr() for p in conv.parameters()}
    skipped |= {
        b.untyped_storage().data_ptr()
        for b in (*conv.forward_transform.buffers(), *conv.inverse_transform.buffers())
    }
    kept: set[int] = set()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skipped and t.numel() > 16 * 16:
            kept.add(storage.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = conv(x)
    return result, kept


@pytest.mark.usefixtures("always_recompute")
def test_gradients_match_finite_differences():
    # the hand-written backward (recomputed analysis, complex products, the
    # adjoint transform) against finite differences, for the field and weight
    torch.manual_seed(0)
    conv = dhconv().double()
    x = torch.randn(2, 3, 6, 12, dtype=torch.float64, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_(True)

    def apply(x, weight):
        return functional_call(conv, {"weight": weight}, (x,))[0]

    assert torch.autograd.gradcheck(apply, (x, weight))


@pytest.mark.usefixtures("always_recompute")
def test_backward_keeps_the_field_not_its_spectrum():
    torch.manual_seed(0)
    conv = dhconv(nlat=8, nlon=16, channels=(4, 4))
    x = torch.randn(1, 4, 8, 16, requires_grad=True)
    assert conv._stores_only_the_field(x)
    # only the input field (the block's skip keeps it too)
    (out, skip), kept = _kept_storages(conv, x)
    assert kept == {x.untyped_storage().data_ptr()}
    assert skip is x
    (out.square().sum()).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.weight.grad.stride() == conv.weight.stride()


def test_recomputation_starts_at_the_threshold(monkeypatch):
    # below recomputation.RECOMPUTE_FROM_ELEMENTS the spectrum is stored (plain
    # autograd); from it on only the field; the numbers are the same
    torch.manual_seed(0)
    conv = dhconv(nlat=8, nlon=16, channels=(4, 4))
    x = torch.randn(2, 4, 8, 16, requires_grad=True)
    results = {}
    for threshold in (x.numel() + 1, x.numel()):
        monkeypatch.setattr(recomputation, "RECOMPUTE_FROM_ELEMENTS", threshold)
        (out, _), kept = _kept_storages(conv, x)
        grads = torch.autograd.grad(out.square().sum(), [x, conv.weight])
        results[threshold] = (out, kept, grads)
    stored, recomputed = results[x.numel() + 1], results[x.numel()]
    field = x.untyped_storage().data_ptr()
    assert recomputed[1] == {field}
    assert len(stored[1]) == 1 and field not in stored[1]  # the spectrum instead
    torch.testing.assert_close(stored[0], recomputed[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(stored[2], recomputed[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("always_recompute")
def test_per_degree_products_at_large_sizes_match_an_einsum():
    # 384 channels take the one-product-per-degree path that skips the orders
    # m > l; output and gradients must equal a plain einsum of the spectrum
    from fme.ace.models import dhconv as dhconv_module

    torch.manual_seed(0)
    batch, channels, nlat = 2, 384, 16
    conv = dhconv(nlat=nlat, nlon=2 * nlat, channels=(channels, channels))
    n_rows = nlat * batch
    assert n_rows * channels**2 >= dhconv_module._LOOP_OVER_DEGREES_MACS
    x = torch.randn(batch, channels, nlat, 2 * nlat, requires_grad=True)
    out, _ = conv(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, conv.weight], grad_out)

    x_ref = x.detach().clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    coeffs = conv.forward_transform(x_ref)  # [m, l, b * c * 2]
    spec = torch.view_as_complex(coeffs.view(nlat, nlat, batch, channels, 2))
    mixed = torch.einsum("mlbi,iol->mlbo", spec, torch.view_as_complex(weight))
    expected = (
        conv.inverse_transform(
            torch.view_as_real(mixed).reshape(nlat, nlat, -1),
            batch=batch,
            channels=channels,
        )
        + conv.bias
    )
    expected_grads = torch.autograd.grad(expected, [x_ref, weight], grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
