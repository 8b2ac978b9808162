"""Real spherical harmonic transforms in the m-major layout used by the SFNO.

The coefficients are those of ``torch_harmonics.RealSHT`` (orthonormal, with
the Condon-Shortley phase), whose quadrature and Legendre tables are used here.
What differs is the layout and the autograd: coefficients are kept as a real
tensor ``[mmax, lmax, batch * channels * 2]`` (last axis: batch, channel,
real/imaginary part) so that each Legendre transform is one batched matrix
product over m, and the longitude FFTs have hand-written backward passes that
are a single inverse FFT each (torch's own backward of ``rfft`` pads the
gradient to the full spectrum and runs a complex FFT, ~4x slower on CPU).
"""

import math
from typing import Any

import torch
import torch_harmonics as th
from torch import nn


def _order_weights(mmax: int, nlon: int, interior: float) -> torch.Tensor:
    """``interior`` for orders 0 < m < nlon / 2, 1 for m = 0 and the Nyquist order."""
    weights = torch.full((mmax,), interior)
    weights[0] = 1.0
    if nlon % 2 == 0 and mmax > nlon // 2:
        weights[nlon // 2] = 1.0
    return weights


def _zero_real_only_imag(fourier: torch.Tensor, nlon: int) -> None:
    """Zero in place the imaginary parts a real field's spectrum cannot have."""
    parts = torch.view_as_real(fourier)
    parts[..., 0, 1] = 0.0
    if nlon % 2 == 0 and fourier.shape[-1] > nlon // 2:
        parts[..., nlon // 2, 1] = 0.0


class _LongitudeFFT(torch.autograd.Function):
    """``[b, c, k, nlon]`` real -> ``[mmax, k, b * c * 2]`` Fourier modes.

    Mode m is ``(1 / nlon) * sum_j x_j exp(-2 pi i m j / nlon)`` for m < mmax.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mmax: int) -> torch.Tensor:
        batch, channels, nlat, nlon = x.shape
        ctx.shape = (batch, channels, nlat, nlon)
        fourier = torch.fft.rfft(x, dim=-1, norm="forward")[..., :mmax]
        fourier = torch.view_as_real(fourier).permute(3, 2, 0, 1, 4)
        return fourier.reshape(mmax, nlat, batch * channels * 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        batch, channels, nlat, nlon = ctx.shape
        mmax = grad.shape[0]
        grad = grad.contiguous().view(mmax, nlat, batch, channels, 2)
        grad = torch.view_as_complex(grad)
        # The adjoint of the truncated one-sided DFT is an inverse real FFT of
        # the gradient with the interior orders halved (irfft doubles them).
        weights = _order_weights(mmax, nlon, 0.5).to(grad.device, grad.real.dtype)
        grad = grad.permute(2, 3, 1, 0) * (weights / nlon)
        _zero_real_only_imag(grad, nlon)
        return torch.fft.irfft(grad, n=nlon, dim=-1, norm="forward"), None


class _InverseLongitudeFFT(torch.autograd.Function):
    """``[mmax, k, b * c * 2]`` Fourier modes -> ``[b, c, k, nlon]`` real field.

    ``x_j = sum_m c_m exp(2 pi i m j / nlon)`` over the Hermitian-extended
    spectrum; the imaginary parts of m = 0 and the Nyquist order are ignored.
    """

    @staticmethod
    def forward(
        ctx: Any, modes: torch.Tensor, nlon: int, batch: int, channels: int
    ) -> torch.Tensor:
        mmax, nlat = modes.shape[:2]
        ctx.mmax, ctx.nlon = mmax, nlon
        fourier = torch.view_as_complex(modes.view(mmax, nlat, batch, channels, 2))
        fourier = fourier.permute(2, 3, 1, 0).contiguous()
        _zero_real_only_imag(fourier, nlon)
        return torch.fft.irfft(fourier, n=nlon, dim=-1, norm="forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        mmax, nlon = ctx.mmax, ctx.nlon
        batch, channels, nlat, _ = grad.shape
        # irfft counts each interior order twice (m and -m): its adjoint is a
        # forward FFT with those orders doubled; m = 0 and Nyquist are real.
        fourier = torch.fft.rfft(grad, dim=-1)[..., :mmax]
        weights = _order_weights(mmax, nlon, 2.0).to(grad.device, grad.dtype)
        fourier = fourier * weights
        _zero_real_only_imag(fourier, nlon)
        fourier = torch.view_as_real(fourier).permute(3, 2, 0, 1, 4)
        return fourier.reshape(mmax, nlat, batch * channels * 2), None, None, None


class SphericalHarmonicTransform(nn.Module):
    """Real spherical harmonic transform of ``[batch, channels, nlat, nlon]``.

    Args:
        nlat: number of latitudes of the grid.
        nlon: number of longitudes of the grid.
        lmax: number of degrees kept (0 <= l < lmax).
        mmax: number of orders kept (0 <= m < mmax), at most ``nlon // 2 + 1``.
        grid: "equiangular" (Clenshaw-Curtis, poles included) or
            "legendre-gauss".
    """

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        # torch-harmonics scales the forward-normalised rfft by 2 pi; fold it in.
        table = 2.0 * math.pi * reference.weights  # [mmax, lmax, nlat]
        self.register_buffer("table", table.float().contiguous(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, "
            f"mmax={self.mmax}, grid={self.grid}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients ``[mmax, lmax, batch * channels * 2]`` of ``x``."""
        modes = _LongitudeFFT.apply(x, self.mmax)
        return torch.bmm(self.table, modes)


class InverseSphericalHarmonicTransform(nn.Module):
    """Inverse of :class:`SphericalHarmonicTransform` onto a (possibly other) grid.

    Args:
        nlat: number of latitudes of the output grid.
        nlon: number of longitudes of the output grid.
        lmax: number of degrees of the input coefficients.
        mmax: number of orders of the input coefficients.
        grid: "equiangular" or "legendre-gauss".
    """

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        table = reference.pct.transpose(1, 2)  # [mmax, nlat, lmax]
        self.register_buffer("table", table.float().contiguous(), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, "
            f"mmax={self.mmax}, grid={self.grid}"
        )

    def forward(
        self, coeffs: torch.Tensor, *, batch: int, channels: int
    ) -> torch.Tensor:
        """Synthesise ``[batch, channels, nlat, nlon]`` from m-major coefficients.

        Args:
            coeffs: ``[mmax, lmax, batch * channels * 2]`` coefficients.
            batch: the batch size packed in the last axis of ``coeffs``.
            channels: the number of channels packed in the last axis.
        """
        modes = torch.bmm(self.table, coeffs)  # [mmax, nlat, (b c 2)]
        return _InverseLongitudeFFT.apply(modes, self.nlon, batch, channels)
