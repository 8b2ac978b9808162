"""The SFNO's Driscoll-Healy mixing of a field's spectrum, storing only the field.

``dhconv`` multiplies the spherical harmonic coefficients of each degree l by
one complex ``[in, out]`` matrix shared by all orders m. Written with autograd,
the matrix product keeps the coefficients, reordered to ``[l, m * batch,
in]``, for the weight's gradient: one more field-sized tensor per block. The
function here keeps the grid field instead (which the block's 1x1 skip keeps
anyway) and recomputes its transform in backward, which costs one more
spherical harmonic analysis per block and step; the SFNO uses it on fields
large enough for that to pay (``fme.ace.models.recomputation``).
"""

from typing import TYPE_CHECKING, Any

import torch

from fme.ace.models.mode_major import from_mode_major, to_mode_major

if TYPE_CHECKING:
    from fme.ace.models.sfno import SpectralConvS2


# From this many complex multiply-adds per degree on, one matrix product per
# degree, skipping the orders m > l whose coefficients vanish (about half the
# rows), beats one batched product; below it the loop's overhead dominates.
_LOOP_OVER_DEGREES_MACS = 1 << 22


def _nonzero_rows(degree: int, n_rows: int, batch: int) -> int:
    """Rows ``(m, batch)`` of degree ``l`` with ``m <= l``, the only nonzero ones."""
    return min(degree + 1, n_rows // batch) * batch


def per_degree_product(
    rows: torch.Tensor, matrices: torch.Tensor, *, batch: int
) -> torch.Tensor:
    """``torch.bmm(rows, matrices)`` for ``rows`` ``[l, m * batch, a]`` of
    coefficients (zero for m > l, as a spherical harmonic spectrum is) and
    ``matrices`` ``[l, a, b]``; rows of m > l give zero rows."""
    n_l, n_rows, inner = rows.shape
    if n_rows * inner * matrices.shape[2] < _LOOP_OVER_DEGREES_MACS:
        return torch.bmm(rows, matrices)
    out = rows.new_empty(n_l, n_rows, matrices.shape[2])
    for degree in range(n_l):
        k = _nonzero_rows(degree, n_rows, batch)
        torch.mm(rows[degree, :k], matrices[degree], out=out[degree, :k])
        out[degree, k:].zero_()
    return out


def _per_degree_gram(
    rows: torch.Tensor, grads: torch.Tensor, *, batch: int
) -> torch.Tensor:
    """``rows^H @ grads`` per degree (``[l, a, b]``), over the nonzero rows."""
    n_l, n_rows, inner = rows.shape
    if n_rows * inner * grads.shape[2] < _LOOP_OVER_DEGREES_MACS:
        return torch.bmm(rows.transpose(1, 2).conj(), grads)
    out = rows.new_empty(n_l, inner, grads.shape[2])
    for degree in range(n_l):
        k = _nonzero_rows(degree, n_rows, batch)
        torch.mm(rows[degree, :k].t().conj(), grads[degree, :k], out=out[degree])
    return out


def _by_degree(coeffs: torch.Tensor, *, n_m: int, n_l: int, batch: int) -> torch.Tensor:
    """``[m, l, batch * c * 2]`` real -> ``[l, m * batch, c]`` complex (a copy)."""
    spec = torch.view_as_complex(coeffs.reshape(n_m, n_l, batch, -1, 2))
    return spec.transpose(0, 1).reshape(n_l, n_m * batch, spec.shape[-1])


def _by_order(rows: torch.Tensor, *, n_m: int, n_l: int, batch: int) -> torch.Tensor:
    """``[l, m * batch, c]`` complex -> ``[m, l, batch * c * 2]`` real (a copy)."""
    spec = rows.view(n_l, n_m, batch, rows.shape[-1]).transpose(0, 1)
    return torch.view_as_real(spec).reshape(n_m, n_l, -1)


class _AnalysisThenDhconv(torch.autograd.Function):
    """``conv.mix(conv.forward_transform(x))`` keeping ``x`` and the weight."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, conv: "SpectralConvS2"
    ) -> torch.Tensor:
        ctx.conv = conv
        ctx.save_for_backward(x, weight)
        return conv.mix(conv.forward_transform(x), batch=x.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        conv = ctx.conv
        batch = x.shape[0]
        sizes = {"n_m": conv.mmax, "n_l": conv.lmax, "batch": batch}
        # weight (in, out, l, 2), stored [l, in, out, 2]: a view, no copy
        matrices = torch.view_as_complex(to_mode_major(weight))
        grad_rows = _by_degree(grad, **sizes)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = _by_degree(conv.forward_transform(x), **sizes)
            per_degree = _per_degree_gram(rows, grad_rows, batch=batch)
            grad_weight = from_mode_major(torch.view_as_real(per_degree))
        if ctx.needs_input_grad[0]:
            adjoints = matrices.transpose(1, 2).conj()
            grad_in = per_degree_product(grad_rows, adjoints, batch=batch)
            grad_coeffs = _by_order(grad_in, **sizes)
            grad_x = conv.forward_transform.adjoint(
                grad_coeffs, batch=batch, channels=conv.in_channels
            )
        return grad_x, grad_weight, None


def analysis_then_dhconv(x: torch.Tensor, conv: "SpectralConvS2") -> torch.Tensor:
    """``conv.mix(conv.forward_transform(x), batch=...)`` for a plain dhconv.

    For ``operator_type="dhconv"`` with ACE's ``(in, out, lmax, 2)`` weight
    layout and no global-mean passthrough; the caller checks this.
    """
    return _AnalysisThenDhconv.apply(x, conv.weight, conv)
