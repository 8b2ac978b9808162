"""Real spherical harmonic transforms in the m-major layout used by the SFNO.

The coefficients are those of ``torch_harmonics.RealSHT`` (orthonormal, with
the Condon-Shortley phase), whose quadrature and Legendre tables are used here.
What differs is the layout and the autograd: coefficients are kept as a real
tensor ``[mmax, lmax, batch * channels * 2]`` (last axis: batch, channel,
real/imaginary part) so that each Legendre transform is one batched matrix
product over m.

Both directions are one pair of autograd functions, each the other's adjoint
(the backward of the analysis is a synthesis with the adjoint tables and the
backward of the synthesis an analysis), so first and higher derivatives need
no other code. Between the grid layout ``[b, c, lat, lon]`` (the FFT runs
along its contiguous last axis) and the m-major layout the data moves by one
two-dimensional transpose ``[b * c, lat * m] <-> [lat * m, b * c]`` of complex
numbers and, for the synthesis, one copy of contiguous rows of ``b * c``
numbers that also applies the Fourier weights and writes into a zero-padded
spectrum, so ``irfft`` gets its full length without a separate padding copy.
(A single permutation ``[b, c, lat, m] -> [m, lat, b, c]`` strides through
memory in every inner step and costs several times more, growing faster than
the data.)
"""

import math
from typing import Any

import torch
import torch_harmonics as th
from torch import nn


def _real_orders(mmax: int, nlon: int) -> list[int]:
    """The orders whose Fourier modes are real: m = 0 and Nyquist (if kept)."""
    if nlon % 2 == 0 and mmax > nlon // 2:
        return [0, nlon // 2]
    return [0]


def _order_weights(mmax: int, nlon: int, interior: float) -> torch.Tensor:
    """``[mmax]`` factors of the Fourier modes: ``interior`` for 0 < m < nlon / 2.

    1 for m = 0 and the Nyquist order, which are real (their imaginary parts
    are dropped where the weights are applied).
    """
    weights = torch.full((mmax,), interior, dtype=torch.float64)
    weights[_real_orders(mmax, nlon)] = 1.0
    return weights


def _check_modes(*, nlat: int, nlon: int, lmax: int, mmax: int) -> None:
    if not 1 <= lmax <= nlat:
        raise ValueError(f"lmax must be in [1, nlat={nlat}], got {lmax}")
    if not 1 <= mmax <= min(lmax, nlon // 2 + 1):
        raise ValueError(
            f"mmax must be in [1, min(lmax, nlon // 2 + 1) = "
            f"{min(lmax, nlon // 2 + 1)}], got {mmax}"
        )


# From this many multiply-adds per order on, one matrix product per order beats
# one batched product: MKL's single-matrix kernel runs 1.5x faster than its
# batched one on the Legendre tables of a 1-degree grid with 384 channels (2x
# at 64x128 with 2048 columns), and per order only the degrees l >= m, about
# half of the table, need multiplying; below it, the per-call overhead of the
# loop dominates.
_LOOP_OVER_ORDERS_MACS = 1 << 23
# Table entries below this magnitude are set to zero: they are subnormal or
# near it (the associated Legendre functions of high order near the poles),
# multiplying by them runs several times slower on x86 CPUs, and what they
# add to a sum is 2^-100 of its terms, far below float32 rounding.
_NEGLIGIBLE = 2.0**-100


def _legendre_table(values: torch.Tensor) -> torch.Tensor:
    """``[mmax, lmax, nlat]`` float32 table for the transforms, checked to
    vanish for l < m (the structure ``_legendre`` relies on), negligible
    entries set to zero."""
    table = values.float().contiguous()
    table[table.abs() < _NEGLIGIBLE] = 0.0
    below = torch.ones(table.shape[:2], dtype=torch.bool).tril(-1)  # [m, l]: l < m
    if table[below].any():
        raise ValueError("a Legendre table must vanish for degrees l < order m")
    return table


def _legendre(
    table: torch.Tensor, data: torch.Tensor, *, to_degrees: bool
) -> torch.Tensor:
    """Per order m: ``table[m] @ data[m]`` (to degrees: ``[m, l, k] @ [m, k,
    c]``) or ``table[m].T @ data[m]`` (from degrees: ``[m, l, k]``, ``[m, l,
    c]``), using that ``table[m, l] = 0`` for ``l < m``."""
    n_orders, n_degrees, n_lat = table.shape
    operator = table if to_degrees else table.transpose(1, 2)
    if n_degrees * n_lat * data.shape[2] < _LOOP_OVER_ORDERS_MACS:
        return torch.bmm(operator, data)
    rows = n_degrees if to_degrees else n_lat
    out = data.new_empty(n_orders, rows, data.shape[2])
    for m in range(n_orders):
        if to_degrees:
            out[m, :m].zero_()
            torch.mm(table[m, m:], data[m], out=out[m, m:])
        else:
            torch.mm(table[m, m:].t(), data[m, m:], out=out[m])
    return out


def _analysis(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``[b, c, k, nlon]`` -> ``[mmax, lmax, b * c * 2]``.

    ``out[m, l] = sum_k table[m, l, k] * F[k, m]`` with ``F`` the unnormalised
    one-sided DFT of each latitude row.
    """
    batch, channels, nlat, nlon = x.shape
    mmax = table.shape[0]
    rows = batch * channels
    fourier = torch.fft.rfft(x.reshape(rows, nlat, nlon), dim=-1)
    n_freq = fourier.shape[-1]
    lat_major = fourier.new_empty(nlat * n_freq, rows)
    lat_major.copy_(fourier.view(rows, nlat * n_freq).t())
    modes = torch.view_as_real(lat_major).view(nlat, n_freq, rows * 2)[:, :mmax]
    return _legendre(table, modes.transpose(0, 1), to_degrees=True)


def _synthesis(
    coeffs: torch.Tensor,
    table: torch.Tensor,
    weights: torch.Tensor,
    *,
    batch: int,
    channels: int,
    nlon: int,
) -> torch.Tensor:
    """``[mmax, lmax, b * c * 2]`` -> ``[b, c, k, nlon]``.

    ``F[k, m] = weights[m] * sum_l table[m, l, k] * coeffs[m, l]``, the
    imaginary parts of the real orders (m = 0, Nyquist) dropped, then an
    unnormalised inverse real FFT of length ``nlon``.
    """
    mmax = coeffs.shape[0]
    nlat = table.shape[2]
    rows = batch * channels
    n_freq = nlon // 2 + 1
    modes = _legendre(table, coeffs, to_degrees=False)  # [mmax, k, rows * 2]
    spectrum = coeffs.new_empty(nlat, n_freq, rows, 2)
    # one factor per order, so the innermost loop runs over rows * 2 numbers
    torch.mul(
        modes.view(mmax, nlat, rows * 2).transpose(0, 1),
        weights.view(1, mmax, 1),
        out=spectrum.view(nlat, n_freq, rows * 2)[:, :mmax],
    )
    for m in _real_orders(mmax, nlon):
        spectrum[:, m, :, 1].zero_()
    if mmax < n_freq:
        spectrum[:, mmax:].zero_()
    complex_spectrum = torch.view_as_complex(spectrum).view(nlat * n_freq, rows)
    grid_major = complex_spectrum.new_empty(rows, nlat * n_freq)
    grid_major.copy_(complex_spectrum.t())
    field = torch.fft.irfft(
        grid_major.view(rows, nlat, n_freq), n=nlon, dim=-1, norm="forward"
    )
    return field.view(batch, channels, nlat, nlon)


class _Analysis(torch.autograd.Function):
    """Grid -> coefficients; its backward is :class:`_Synthesis` (the adjoint)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        table: torch.Tensor,
        adjoint_table: torch.Tensor,
        adjoint_weights: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(table, adjoint_table, adjoint_weights)
        ctx.grid = (x.shape[0], x.shape[1], x.shape[3])
        return _analysis(x.contiguous(), table)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        table, adjoint_table, adjoint_weights = ctx.saved_tensors
        batch, channels, nlon = ctx.grid
        grad_x = _Synthesis.apply(
            grad, adjoint_table, adjoint_weights, table, batch, channels, nlon
        )
        return grad_x, None, None, None


class _Synthesis(torch.autograd.Function):
    """Coefficients -> grid; its backward is :class:`_Analysis` (the adjoint)."""

    @staticmethod
    def forward(
        ctx: Any,
        coeffs: torch.Tensor,
        table: torch.Tensor,
        weights: torch.Tensor,
        adjoint_table: torch.Tensor,
        batch: int,
        channels: int,
        nlon: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(table, weights, adjoint_table)
        return _synthesis(
            coeffs.contiguous(),
            table,
            weights,
            batch=batch,
            channels=channels,
            nlon=nlon,
        )

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        table, weights, adjoint_table = ctx.saved_tensors
        grad_coeffs = _Analysis.apply(grad, adjoint_table, table, weights)
        return grad_coeffs, None, None, None, None, None, None


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
    adjoint_weights: torch.Tensor

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        _check_modes(nlat=nlat, nlon=nlon, lmax=lmax, mmax=mmax)
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.RealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        # torch-harmonics scales the forward-normalised rfft by 2 pi; the FFT
        # here is unnormalised, so the table carries 2 pi / nlon.
        table = (2.0 * math.pi / nlon) * reference.weights.double()
        self.register_buffer("table", _legendre_table(table), persistent=False)
        # The adjoint of the truncated one-sided DFT is an unnormalised inverse
        # real FFT with the interior orders halved (irfft counts m and -m) and
        # no imaginary part at m = 0 and Nyquist.
        self.register_buffer(
            "adjoint_weights",
            _order_weights(mmax, nlon, 0.5).float(),
            persistent=False,
        )

    def extra_repr(self) -> str:
        return (
            f"nlat={self.nlat}, nlon={self.nlon}, lmax={self.lmax}, "
            f"mmax={self.mmax}, grid={self.grid}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coefficients ``[mmax, lmax, batch * channels * 2]`` of ``x``."""
        return _Analysis.apply(x, self.table, self.table, self.adjoint_weights)

    def adjoint(
        self, coeffs: torch.Tensor, *, batch: int, channels: int
    ) -> torch.Tensor:
        """The adjoint of ``forward`` (no autograd): the gradient of the grid
        field given that of its coefficients ``[mmax, lmax, b * c * 2]``."""
        return _synthesis(
            coeffs.contiguous(),
            self.table,
            self.adjoint_weights,
            batch=batch,
            channels=channels,
            nlon=self.nlon,
        )


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
    adjoint_table: torch.Tensor
    weights: torch.Tensor

    def __init__(self, *, nlat: int, nlon: int, lmax: int, mmax: int, grid: str):
        super().__init__()
        _check_modes(nlat=nlat, nlon=nlon, lmax=lmax, mmax=mmax)
        self.nlat, self.nlon, self.grid = nlat, nlon, grid
        self.lmax, self.mmax = lmax, mmax
        reference = th.InverseRealSHT(nlat, nlon, lmax=lmax, mmax=mmax, grid=grid)
        table = _legendre_table(reference.pct.double())  # [mmax, lmax, nlat]
        self.register_buffer("table", table, persistent=False)
        # The imaginary parts of m = 0 and the Nyquist order are ignored.
        self.register_buffer(
            "weights", _order_weights(mmax, nlon, 1.0).float(), persistent=False
        )
        # The adjoint of irfft is a forward FFT with the interior orders doubled
        # (irfft counts m and -m); the imaginary parts it yields at m = 0 and
        # Nyquist are zero for a real field, so a factor per order suffices.
        order_factor = _order_weights(mmax, nlon, 2.0)[:, None, None]
        self.register_buffer(
            "adjoint_table",
            (table * order_factor).float().contiguous(),
            persistent=False,
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
        return _Synthesis.apply(
            coeffs,
            self.table,
            self.weights,
            self.adjoint_table,
            batch,
            channels,
            self.nlon,
        )
