"""Pointwise (1x1) channel mixing and the ``Linear1x1`` module."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fme.ace.models import recomputation
from fme.ace.models.registry import MODULE_REGISTRY


class PointwiseLinear(nn.Module):
    """The same affine map of channels at every grid point (a 1x1 convolution).

    ``y[b, o, i, j] = sum_c weight[o, c] * x[b, c, i, j] + bias[o]``.

    Implemented as a batched matrix product rather than ``nn.Conv2d`` because
    the CPU backward of a 1x1 convolution is several times slower.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels.
        bias: whether to add a learned bias per output channel.
        init_gain: weights start as N(0, init_gain / in_channels), so an input of
            unit variance gives an output of variance ``init_gain``. The bias
            starts at zero.
        conv_shape: store ``weight`` as ``[out, in, 1, 1]``, the shape of a 1x1
            ``nn.Conv2d`` (ACE's layers), instead of ``[out, in]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bias: bool = True,
        init_gain: float = 1.0,
        conv_shape: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        std = math.sqrt(init_gain / in_channels)
        shape = (out_channels, in_channels) + ((1, 1) if conv_shape else ())
        self.weight = nn.Parameter(torch.randn(shape) * std)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, in_channels, lat, lon]`` to ``[batch, out_channels, ...]``."""
        return self.apply_weights(x, self.weight, self.bias)

    def apply_weights(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The map with the given ``weight`` and ``bias`` (this layer's shapes)."""
        batch, _, n_lat, n_lon = x.shape
        flat = x.reshape(batch, self.in_channels, n_lat * n_lon)
        weight = weight.reshape(self.out_channels, self.in_channels)
        weight = weight.expand(batch, -1, -1)
        if bias is None:
            out = torch.bmm(weight, flat)
        else:
            bias = bias.view(1, -1, 1).expand(batch, -1, n_lat * n_lon)
            out = torch.baddbmm(bias, weight, flat)
        return out.view(batch, self.out_channels, n_lat, n_lon)

    def forward_concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``forward(torch.cat(parts, dim=1))`` without materialising the concat.

        Each part is multiplied by its block of input columns and the products
        are accumulated, which saves a copy of all parts (and, in backward, of
        their gradients).
        """
        batch, _, n_lat, n_lon = parts[0].shape
        sizes = [part.shape[1] for part in parts]
        if sum(sizes) != self.in_channels:
            raise ValueError(
                f"parts have {sum(sizes)} channels in total, expected "
                f"{self.in_channels}"
            )
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        out: torch.Tensor | None = None
        for part, block in zip(parts, weight.split(sizes, dim=1), strict=True):
            flat = part.reshape(batch, part.shape[1], n_lat * n_lon)
            block = block.expand(batch, -1, -1)
            if out is None:
                if self.bias is None:
                    out = torch.bmm(block, flat)
                else:
                    bias = self.bias.view(1, -1, 1).expand(batch, -1, n_lat * n_lon)
                    out = torch.baddbmm(bias, block, flat)
            else:
                out = torch.baddbmm(out, block, flat)
        assert out is not None
        return out.view(batch, self.out_channels, n_lat, n_lon)


class _RecomputedThenLinear(torch.autograd.Function):
    """``linear(fn(h))`` keeping only ``h`` for backward.

    ``fn`` (an activation, a normalisation, or a front part of an MLP) is
    recomputed in backward instead of its output and intermediates being
    stored, trading one more pass of ``fn`` for their memory. ``fn``'s own
    parameters come last, so that they receive their gradients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        fn: Callable[[torch.Tensor], torch.Tensor],
        linear: "PointwiseLinear",
        *fn_params: torch.Tensor,
    ) -> torch.Tensor:
        ctx.fn, ctx.fn_params = fn, fn_params
        ctx.has_bias = bias is not None
        ctx.save_for_backward(h, weight)
        return linear.apply_weights(fn(h), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple:  # type: ignore[override]
        h, weight = ctx.saved_tensors
        fn_params = [
            p
            for p, needed in zip(ctx.fn_params, ctx.needs_input_grad[5:], strict=True)
            if needed
        ]
        with torch.enable_grad():
            h_leaf = h.detach().requires_grad_(ctx.needs_input_grad[0])
            g = ctx.fn(h_leaf)
        batch, n_out = grad_out.shape[:2]
        go = grad_out.reshape(batch, n_out, -1)
        g_flat = g.detach().reshape(batch, g.shape[1], -1)
        w = weight.reshape(n_out, g.shape[1])
        grad_weight = grad_bias = grad_h = None
        if ctx.needs_input_grad[1]:
            grad_weight = torch.bmm(go, g_flat.transpose(1, 2)).sum(0)
            grad_weight = grad_weight.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = go.sum(dim=(0, 2))
        inputs = ([h_leaf] if ctx.needs_input_grad[0] else []) + fn_params
        grads: list[torch.Tensor | None] = []
        if inputs:
            # bmm of the transposed weight writes [batch, hidden, points]
            # directly; matmul would compute the transpose and copy it back
            grad_g = torch.bmm(w.t().expand(batch, -1, -1), go).view(g.shape)
            grads = list(torch.autograd.grad(g, inputs, grad_g, allow_unused=True))
        if ctx.needs_input_grad[0]:
            grad_h = grads.pop(0)
        param_grads = iter(grads)
        return (
            grad_h,
            grad_weight,
            grad_bias,
            None,
            None,
            *(
                next(param_grads) if needed else None
                for needed in ctx.needs_input_grad[5:]
            ),
        )


def recomputed_then_linear(
    h: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    linear: nn.Module,
    fn_params: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """``linear(fn(h))``, recomputing ``fn(h)`` in backward instead of storing it.

    ``fn`` must be deterministic and its parameters listed in ``fn_params``
    (they get their gradients through this call). Falls back to the plain
    composition where the recomputation does not apply: no gradient recorded,
    under autocast (mixed precision), or when ``linear`` is not a plain
    :class:`PointwiseLinear`; and where it does not pay: for ``h`` of fewer
    than ``recomputation.RECOMPUTE_FROM_ELEMENTS`` elements.
    """
    if (
        type(linear) is not PointwiseLinear
        or not torch.is_grad_enabled()
        or torch.is_autocast_enabled(h.device.type)
        or not recomputation.recomputes(h.numel())
    ):
        return linear(fn(h))
    return _RecomputedThenLinear.apply(
        h, linear.weight, linear.bias, fn, linear, *fn_params
    )


def activation_then_linear(
    h: torch.Tensor, activation: nn.Module, linear: nn.Module
) -> torch.Tensor:
    """``linear(activation(h))``, recomputing the activation in backward."""
    return recomputed_then_linear(h, activation, linear)


@MODULE_REGISTRY.register("Linear1x1")
@dataclass
class Linear1x1Config:
    """A single pointwise linear map of channels, for tests with analytic gradients.

    The built module has parameters ``weight`` of shape
    ``[n_out_channels, n_in_channels]`` and, if ``bias``, ``bias`` of shape
    ``[n_out_channels]``: ``n_in * n_out + n_out * bias`` parameters.

    Attributes:
        bias: whether to add a learned bias per output channel.
    """

    bias: bool = True

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the module; ``img_shape`` is not needed by a pointwise map."""
        del img_shape
        return PointwiseLinear(n_in_channels, n_out_channels, bias=self.bias)
