import torch
from torch.func import functional_call

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
    assert conv._stores_only_the_field()
    return conv


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


def test_backward_keeps_the_field_not_its_spectrum():
    torch.manual_seed(0)
    conv = dhconv(nlat=8, nlon=16, channels=(4, 4))
    params = {p.untyped_storage().data_ptr() for p in conv.parameters()}
    x = torch.randn(1, 4, 8, 16, requires_grad=True)
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.numel() > 16 * 16:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, skip = conv(x)
    # the input field (the block's skip keeps it too) and the transform tables
    tables = {
        b.untyped_storage().data_ptr()
        for b in (*conv.forward_transform.buffers(), *conv.inverse_transform.buffers())
    }
    assert set(kept) - tables == {x.untyped_storage().data_ptr()}
    assert skip is x
    (out.square().sum()).backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.weight.grad.stride() == conv.weight.stride()
