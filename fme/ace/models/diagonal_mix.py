"""The SFNO's diagonal mixing: one complex ``[in, out]`` matrix per mode (l, m).

The weight keeps ACE's shape ``(in, out, lmax, weight_mmax, 2)`` over
mode-major memory ``[weight_mmax, lmax, in, out, 2]``; ACE may keep more
orders than the transforms (``weight_mmax > mmax``), whose matrices never
multiply anything. Written with autograd, the product with the first ``mmax``
orders back-propagates through a slice, a complex view and a permutation: a
zero-filled gradient of the whole weight, a copy of the slice into it, and a
materialised conjugate of the weight. The function here writes the weight's
gradient once, in the parameter's own memory layout (so the optimiser and the
gradient accumulation see matching strides), zeroing only the unused orders.
"""

from typing import Any

import torch

from fme.ace.models.mode_major import from_mode_major, to_mode_major


class _DiagonalProduct(torch.autograd.Function):
    """``out[m, l, b, o] = sum_i spec[m, l, b, i] * w[i, o, l, m]`` (complex)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, spec: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        n_m, n_l, batch, n_in = spec.shape
        matrices = _matrices(weight, n_m)
        ctx.save_for_backward(spec, weight)
        rows = spec.reshape(n_m * n_l, batch, n_in)
        mixed = torch.bmm(rows, matrices.reshape(n_m * n_l, n_in, -1))
        return mixed.view(n_m, n_l, batch, -1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        spec, weight = ctx.saved_tensors
        n_m, n_l, batch, n_in = spec.shape
        n_out = weight.shape[1]
        rows = spec.reshape(n_m * n_l, batch, n_in)
        grads = grad.reshape(n_m * n_l, batch, n_out)
        grad_spec = grad_weight = None
        if ctx.needs_input_grad[0]:
            matrices = _matrices(weight, n_m).reshape(n_m * n_l, n_in, n_out)
            # grad @ W^H as conj(conj(grad) @ W^T): conjugating the smaller
            # operand, not each weight matrix
            grad_spec = torch.bmm(grads.conj(), matrices.transpose(1, 2))
            grad_spec = grad_spec.conj().resolve_conj()
            grad_spec = grad_spec.view(n_m, n_l, batch, n_in)
        if ctx.needs_input_grad[1]:
            memory = weight.new_empty(to_mode_major(weight).shape)
            per_mode = torch.view_as_complex(memory)
            per_mode[n_m:].zero_()  # orders the transforms do not keep
            torch.bmm(
                rows.transpose(1, 2).conj(),
                grads,
                out=per_mode[:n_m].view(n_m * n_l, n_in, n_out),
            )
            grad_weight = from_mode_major(memory)
        return grad_spec, grad_weight


def _matrices(weight: torch.Tensor, n_m: int) -> torch.Tensor:
    """The complex ``[n_m, l, in, out]`` matrices of the first ``n_m`` orders."""
    memory = to_mode_major(weight).contiguous()
    return torch.view_as_complex(memory[:n_m])


def diagonal_product(spec: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mix complex coefficients ``[mmax, lmax, batch, in]`` with the diagonal
    weight ``(in, out, lmax, weight_mmax, 2)`` (``weight_mmax >= mmax``).

    Returns:
        ``[mmax, lmax, batch, out]`` complex coefficients.
    """
    return _DiagonalProduct.apply(spec, weight)
