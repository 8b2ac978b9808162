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


def _fourier_weights(mmax: int, nlon: int, interior: float) -> torch.Tensor:
    """``[mmax, 2]`` factors for the (real, imaginary) parts of Fourier modes.

    ``interior`` for orders 0 < m < nlon / 2; 1 for the real parts and 0 for the
    imaginary parts of m = 0 and of the Nyquist order, which are real.
    """
    weights = torch.full((mmax, 2), interior)
    weights[0] = torch.tensor([1.0, 0.0])
    if nlon % 2 == 0 and mmax > nlon // 2:
        weights[nlon // 2] = torch.tensor([1.0, 0.0])
    return weights


def _check_modes(*, nlat: int, nlon: int, lmax: int, mmax: int) -> None:
    if not 1 <= lmax <= nlat:
        raise ValueError(f"lmax must be in [1, nlat={nlat}], got {lmax}")
    if not 1 <= mmax <= min(lmax, nlon // 2 + 1):
        raise ValueError(
            f"mmax must be in [1, min(lmax, nlon // 2 + 1) = "
            f"{min(lmax, nlon // 2 + 1)}], got {mmax}"
        )


def _padded_spectrum(fourier: torch.Tensor, nlon: int) -> torch.Tensor:
    """``[..., mmax]`` modes as a new contiguous ``[..., nlon // 2 + 1]`` tensor.

    Zero-padding here, in the copy that makes the modes contiguous anyway, saves
    ``irfft`` a second full copy (and a fill) to pad them itself.
    """
    n_pad = nlon // 2 + 1 - fourier.shape[-1]
    if n_pad == 0:
        return fourier.contiguous()
    zeros = fourier.new_zeros(*fourier.shape[:-1], n_pad)
    return torch.cat([fourier, zeros], dim=-1)


class _LongitudeFFT(torch.autograd.Function):
    """``[b, c, k, nlon]`` real -> ``[mmax, k, b * c * 2]`` Fourier modes.

    Mode m is ``(1 / nlon) * sum_j x_j exp(-2 pi i m j / nlon)`` for m < mmax.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, mmax: int, grad_weights: torch.Tensor
    ) -> torch.Tensor:
        batch, channels, nlat, nlon = x.shape
        ctx.shape = (batch, channels, nlat, nlon)
        ctx.save_for_backward(grad_weights)
        fourier = torch.fft.rfft(x, dim=-1, norm="forward")[..., :mmax]
        fourier = torch.view_as_real(fourier).permute(3, 2, 0, 1, 4)
        return fourier.reshape(mmax, nlat, batch * channels * 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        batch, channels, nlat, nlon = ctx.shape
        mmax = grad.shape[0]
        # The adjoint of the truncated one-sided DFT is an inverse real FFT of
        # the gradient with the interior orders halved (irfft doubles them)
        # and no imaginary part at m = 0 and Nyquist (irfft ignores it there).
        grad = grad.contiguous().view(mmax, nlat, batch * channels, 2)
        (grad_weights,) = ctx.saved_tensors
        grad = (grad * grad_weights).view(mmax, nlat, batch, channels, 2)
        grad = _padded_spectrum(torch.view_as_complex(grad).permute(2, 3, 1, 0), nlon)
        return torch.fft.irfft(grad, n=nlon, dim=-1, norm="forward"), None, None


class _InverseLongitudeFFT(torch.autograd.Function):
    """``[mmax, k, b * c * 2]`` Fourier modes -> ``[b, c, k, nlon]`` real field.

    ``x_j = sum_m c_m exp(2 pi i m j / nlon)`` over the Hermitian-extended
    spectrum; the imaginary parts of m = 0 and the Nyquist order are ignored.
    """

    @staticmethod
    def forward(
        ctx: Any,
        modes: torch.Tensor,
        nlon: int,
        batch: int,
        channels: int,
        grad_weights: torch.Tensor,
    ) -> torch.Tensor:
        mmax, nlat = modes.shape[:2]
        ctx.mmax = mmax
        ctx.save_for_backward(grad_weights)
        fourier = modes.reshape(mmax, nlat, batch, channels, 2)
        fourier = _padded_spectrum(
            torch.view_as_complex(fourier).permute(2, 3, 1, 0), nlon
        )
        parts = torch.view_as_real(fourier)
        parts[..., 0, 1] = 0.0
        if nlon % 2 == 0 and mmax > nlon // 2:
            parts[..., nlon // 2, 1] = 0.0
        return torch.fft.irfft(fourier, n=nlon, dim=-1, norm="forward")

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None]:
        mmax = ctx.mmax
        (grad_weights,) = ctx.saved_tensors
        batch, channels, nlat, _ = grad.shape
        # irfft counts each interior order twice (m and -m): its adjoint is a
        # forward FFT with those orders doubled; m = 0 and Nyquist are real.
        fourier = torch.view_as_real(torch.fft.rfft(grad, dim=-1)[..., :mmax])
        fourier = (fourier * grad_weights).permute(3, 2, 0, 1, 4)
        return (
            fourier.reshape(mmax, nlat, batch * channels * 2),
            None,
            None,
            None,
            None,
        )


class SphericalHarmonicTransform(nn.Module):
    """Real spherical harmonic transform of ``[batch, channels, nlat, nlon]``.

    Args:
        nlat: number of latitudes of the grid.
        nlon: number of longitudes of the grid.
        lmax: number of degrees kept (0 <= l < lmax).
        mmax: number of orders kept (0 <= m < mmax), at most
            ``min(lmax, nlon // 2 + 1)``.
        grid: "equiangular" (Clenshaw-Curtis, poles included) or
            "legendre-gauss".
    """

    table: torch.Tensor
    fft_grad_weights: torch.Tensor

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        _check_modes(nlat=nlat, nlon=nlon, lmax=lmax, mmax=mmax)
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        # torch-harmonics scales the forward-normalised rfft by 2 pi; fold it in.
        table = 2.0 * math.pi * reference.weights  # [mmax, lmax, nlat]
        self.register_buffer("table", table.float().contiguous(), persistent=False)
        grad_weights = _fourier_weights(mmax, nlon, 0.5) / nlon
        self.register_buffer(
            "fft_grad_weights", grad_weights.view(mmax, 1, 1, 2), persistent=False
        )

    def extra_repr(self) -> str:
        return (
            f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, "
            f"mmax={self.mmax}, grid={self.grid}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients ``[mmax, lmax, batch * channels * 2]`` of ``x``."""
        modes = _LongitudeFFT.apply(x, self.mmax, self.fft_grad_weights)
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

    table: torch.Tensor
    fft_grad_weights: torch.Tensor

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        _check_modes(nlat=nlat, nlon=nlon, lmax=lmax, mmax=mmax)
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        table = reference.pct.transpose(1, 2)  # [mmax, nlat, lmax]
        self.register_buffer("table", table.float().contiguous(), persistent=False)
        self.register_buffer(
            "fft_grad_weights", _fourier_weights(mmax, nlon, 2.0), persistent=False
        )

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
        return _InverseLongitudeFFT.apply(
            modes, self.nlon, batch, channels, self.fft_grad_weights
        )
