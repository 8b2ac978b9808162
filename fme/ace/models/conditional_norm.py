"""ACE2S's conditional layer norm: a layer norm whose scale and shift see noise.

``norm(x; z) = layer_norm(x) * (1 + W_scale z) + W_bias z`` with 1x1
convolutions ``W_scale_2d``, ``W_bias_2d`` (zero at initialisation) of the
noise ``z``. The layer norm is over the channels of each grid point (ACE's
default, eps 1e-5), optionally with a learned element-wise affine map, or
over channels and grid together (``global_layer_norm``, ``nn.LayerNorm``).

Speed: the per-point channel norm and the conditioning run as one autograd
function with a hand-written backward (:class:`_ChannelNormModulation`): four
full passes over the field forward and eight backward, against about twice as
many for the same expression left to autograd. On CPU the norms are bound by
memory traffic, so this is where a NoiseConditionedSFNO spends less time.
"""

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from fme.ace.models.pointwise import PointwiseLinear

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _ChannelNormModulation(torch.autograd.Function):
    """``(layer_norm_c(x) * w + b) * (1 + scale) + shift`` over the channel axis.

    ``x``, ``scale``, ``shift``: ``[batch, channels, lat, lon]``; ``w``, ``b``:
    ``[channels]`` or None (no element-wise affine map). The layer norm uses
    the biased variance over axis 1, as ``torch.nn.LayerNorm`` does.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        shift: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        # mean of squares rather than torch.var: a reduction over the channel
        # axis that keeps the grid axes innermost is several times faster on CPU
        centered = x - x.mean(dim=1, keepdim=True)
        rstd = torch.rsqrt(centered.square().mean(dim=1, keepdim=True).add_(eps))
        normed = centered.mul_(rstd)
        affine = normed
        if weight is not None and bias is not None:
            affine = torch.addcmul(bias.view(-1, 1, 1), normed, weight.view(-1, 1, 1))
        out = torch.addcmul(shift, affine, scale).add_(affine)
        ctx.save_for_backward(normed, rstd, scale, weight, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        normed, rstd, scale, weight, bias = ctx.saved_tensors
        affine = normed
        if weight is not None and bias is not None:
            affine = torch.addcmul(bias.view(-1, 1, 1), normed, weight.view(-1, 1, 1))
        grad_scale = grad * affine
        grad_affine = torch.addcmul(grad, grad, scale)
        grad_weight = grad_bias = None
        grad_normed = grad_affine
        if weight is not None:
            grad_weight = (grad_affine * normed).sum(dim=(0, 2, 3))
            grad_bias = grad_affine.sum(dim=(0, 2, 3))
            grad_normed = grad_affine * weight.view(-1, 1, 1)
        # d layer_norm: rstd * (g - mean_c(g) - normed * mean_c(g * normed))
        mean_grad = grad_normed.mean(dim=1, keepdim=True)
        mean_proj = (grad_normed * normed).mean(dim=1, keepdim=True)
        grad_x = torch.addcmul(grad_normed - mean_grad, normed, mean_proj, value=-1.0)
        grad_x.mul_(rstd)
        return grad_x, grad_scale, grad, grad_weight, grad_bias, None


class ConditionalLayerNorm(nn.Module):
    """``layer_norm(x) * (1 + W_scale_2d z) + W_bias_2d z`` for noise ``z``.

    Parameter names are ACE's: ``W_scale_2d.weight``, ``W_bias_2d.weight``
    (``[channels, noise_channels, 1, 1]``) and, with ``affine``,
    ``norm.weight``, ``norm.bias``.

    Args:
        channels: channels of ``x``.
        noise_channels: channels of ``z``.
        grid: (lat, lon), for ``global_layer_norm``.
        global_layer_norm: normalise over channels and grid points together.
        affine: learned element-wise affine parameters of the layer norm.
    """

    def __init__(
        self,
        channels: int,
        *,
        noise_channels: int,
        grid: tuple[int, int],
        global_layer_norm: bool,
        affine: bool,
    ):
        super().__init__()
        self.W_scale_2d = PointwiseLinear(
            noise_channels, channels, bias=False, conv_shape=True
        )
        self.W_bias_2d = PointwiseLinear(
            noise_channels, channels, bias=False, conv_shape=True
        )
        for layer in (self.W_scale_2d, self.W_bias_2d):
            nn.init.zeros_(layer.weight)
        self.norm: nn.Module
        if global_layer_norm:
            self.norm = nn.LayerNorm(
                (channels, *grid), eps=1e-5, elementwise_affine=affine
            )
        else:
            self.norm = ChannelLayerNorm(channels, affine=affine)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Normalise ``[batch, channels, lat, lon]`` conditioned on ``noise``."""
        scale = self.W_scale_2d(noise)
        shift = self.W_bias_2d(noise)
        if not isinstance(self.norm, ChannelLayerNorm):
            return self.norm(x) * (1.0 + scale) + shift
        dtype = x.dtype
        if dtype in _LOW_PRECISION:  # the statistics in float32 (as under autocast)
            x, scale, shift = x.float(), scale.float(), shift.float()
        out = _ChannelNormModulation.apply(
            x.contiguous(),
            scale.contiguous(),
            shift.contiguous(),
            self.norm.weight,
            self.norm.bias,
            self.norm.eps,
        )
        return out.to(dtype)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of each grid point (ACE's, eps 1e-5).

    Args:
        channels: number of channels.
        affine: learned per-channel ``weight`` and ``bias``.
        eps: added to the variance.
    """

    def __init__(self, channels: int, *, affine: bool, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``[batch, channels, lat, lon]`` over its channels.

        Plain autograd; :class:`ConditionalLayerNorm` runs the same norm fused
        with its conditioning.
        """
        centered = x - x.mean(dim=-3, keepdim=True)
        var = (centered * centered).mean(dim=-3, keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None and self.bias is not None:
            y = y * self.weight.view(-1, 1, 1) + self.bias.view(-1, 1, 1)
        return y
