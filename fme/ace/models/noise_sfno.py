"""ACE2S's ``NoiseConditionedSFNO``: an SFNO whose normalisations see fresh noise.

Every call draws noise ``z`` (``noise_embed_dim`` channels on the grid:
``gaussian`` white noise, or ``isotropic`` noise synthesised from random
spherical-harmonic coefficients with unit variance), and every normalisation
layer is conditioned on it (conditional layer norm, as ACE's)::

    norm(x; z) = layer_norm(x) * (1 + W_scale z) + W_bias z

with 1x1 convolutions ``W_scale``, ``W_bias`` (zero at initialisation) and a
layer norm over the channels of each grid point (``global_layer_norm``: over
channels and grid). The rest is ACE's conditional SFNO: encoder, position
embedding, blocks (norm0, dhconv filter + 1x1 skip, activation, norm1, MLP,
identity outer skip), big skip (optionally normalised and filtered), decoder
(optionally filtered). Parameter names and shapes are ACE's
(``conditional_model.blocks.<i>.norm0.W_scale_2d.weight``,
``conditional_model.blocks.<i>.filter.filter.weight`` of shape ``(1, lmax,
out, in, 2)``, ...).

Noise is drawn from torch's global generator in the same order and shapes as
ACE's (``torch.randn``), so with the same seed the same weights give the same
output as the released network.
"""

import math
from typing import Any

import torch
from torch import nn

from fme.ace.models.conditional_norm import ConditionalLayerNorm
from fme.ace.models.sfno import ACTIVATIONS, SFNOBlock, SFNOStack
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)


class ConditionalSFNO(SFNOStack):
    """ACE's conditional SFNO (``conditional_model``), given the noise.

    The shared SFNO stack (:class:`SFNOStack`, :class:`SFNOBlock`) with
    conditional norms in the blocks, dhconv filters in ACE's conditional
    weight layout and the conditional SFNO's own input and output steps.

    Args:
        n_in_channels: input channels.
        n_out_channels: output channels.
        img_shape: (lat, lon) of the data grid.
        embed_dim: feature channels.
        noise_channels: channels of the conditioning noise.
        num_layers: number of blocks.
        use_mlp: whether blocks end with a pointwise MLP.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        activation_function: "gelu", "relu" or "silu".
        encoder_layers: hidden layers of encoder and decoder.
        pos_embed: learned position embedding after the encoder.
        big_skip: the decoder also sees the (filtered, normalised) input.
        checkpointing: activation checkpointing level as in ACE.
        data_grid: "legendre-gauss" or "equiangular".
        global_layer_norm: see :class:`ConditionalLayerNorm`.
        affine_norms: see :class:`ConditionalLayerNorm`.
        filter_residual: skips pass through an SHT round trip.
        filter_output: the output passes through an SHT round trip.
        normalize_big_skip: the big skip passes through a conditional norm.
        filter_preserves_global_mean: filters leave l = 0 unchanged.
    """

    def __init__(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
        embed_dim: int,
        noise_channels: int,
        num_layers: int,
        use_mlp: bool,
        mlp_ratio: float,
        activation_function: str,
        encoder_layers: int,
        pos_embed: bool,
        big_skip: bool,
        checkpointing: int,
        data_grid: str,
        global_layer_norm: bool,
        affine_norms: bool,
        filter_residual: bool,
        filter_output: bool,
        normalize_big_skip: bool,
        filter_preserves_global_mean: bool,
    ):
        n_lat, n_lon = img_shape
        lmax = n_lat
        weight_mmax = n_lon // 2 + 1
        mmax = min(weight_mmax, lmax)
        activation = ACTIVATIONS[activation_function]
        data: dict[str, Any] = dict(
            nlat=n_lat, nlon=n_lon, grid=data_grid, lmax=lmax, mmax=mmax
        )
        trans_down = SphericalHarmonicTransform(**data)
        itrans_up = InverseSphericalHarmonicTransform(**data)
        trans, itrans = trans_down, itrans_up
        if data_grid != "legendre-gauss":  # the blocks between work on Gauss
            inner = dict(data, grid="legendre-gauss")
            trans = SphericalHarmonicTransform(**inner)
            itrans = InverseSphericalHarmonicTransform(**inner)
        norm_kwargs: dict[str, Any] = dict(
            noise_channels=noise_channels,
            grid=(n_lat, n_lon),
            global_layer_norm=global_layer_norm,
            affine=affine_norms,
        )

        def make_blocks() -> list[SFNOBlock]:
            return [
                SFNOBlock(
                    forward_transform=trans_down if i == 0 else trans,
                    inverse_transform=itrans_up if i == num_layers - 1 else itrans,
                    embed_dim=embed_dim,
                    operator_type="dhconv",
                    weight_mmax=None,
                    activation=activation,
                    norm0=ConditionalLayerNorm(embed_dim, **norm_kwargs),
                    norm1=ConditionalLayerNorm(embed_dim, **norm_kwargs),
                    use_mlp=use_mlp,
                    mlp_ratio=mlp_ratio,
                    checkpoint_mlp=checkpointing >= 2,
                    weight_layout="group_out_in",
                    round_trip_residual=filter_residual,
                    preserve_global_mean=filter_preserves_global_mean,
                )
                for i in range(num_layers)
            ]

        super().__init__(
            n_in=n_in_channels,
            n_skip=n_in_channels if big_skip else 0,
            n_out=n_out_channels,
            img_shape=(n_lat, n_lon),
            embed_dim=embed_dim,
            encoder_layers=encoder_layers,
            activation=activation,
            pos_embed=pos_embed,
            checkpointing=checkpointing,
            make_blocks=make_blocks,
        )
        self.norm_big_skip: ConditionalLayerNorm | None = None
        if normalize_big_skip:
            self.norm_big_skip = ConditionalLayerNorm(n_in_channels, **norm_kwargs)
        self.trans_down = trans_down
        self.itrans_up = itrans_up
        self.lmax = lmax
        self.weight_mmax = weight_mmax
        self.big_skip = big_skip
        self.filter_residual = filter_residual
        self.filter_output = filter_output

    def _round_trip(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            coeffs = self.trans_down(x.float() if dtype != torch.float64 else x)
            out = self.itrans_up(coeffs, batch=batch, channels=channels)
        return out.to(dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, n_in, lat, lon]`` and noise to ``[batch, n_out, ...]``."""
        skip: torch.Tensor | None = None
        if self.big_skip:
            skip = x
            if self.filter_residual:
                skip = self._round_trip(skip)
            if self.norm_big_skip is not None:
                skip = self.norm_big_skip(skip, noise)
        h = self.run_stack(x, skip, noise)
        if self.filter_output:
            h = self._round_trip(h)
        return h


class NoiseConditionedSFNO(nn.Module):
    """Draws the noise and calls the conditional SFNO (``conditional_model``).

    Args:
        conditional_model: the network given the noise.
        noise_channels: channels of the noise.
        noise_type: "gaussian" (white noise on the grid) or "isotropic"
            (random spherical-harmonic coefficients, unit variance in space).
    """

    def __init__(
        self,
        conditional_model: ConditionalSFNO,
        *,
        noise_channels: int,
        noise_type: str,
    ):
        super().__init__()
        self.conditional_model = conditional_model
        self.noise_channels = noise_channels
        self.noise_type = noise_type

    def _isotropic_noise(self, batch: int, device: torch.device) -> torch.Tensor:
        model = self.conditional_model
        lmax, mmax = model.lmax, model.weight_mmax
        shape = (batch, self.noise_channels, lmax, mmax)
        real = torch.randn(shape, dtype=torch.float32, device=device)
        imag = torch.randn(shape, dtype=torch.float32, device=device)
        imag[..., :, 0] = 0.0  # m = 0 is real
        # m > 0: real and imaginary parts N(0, 1/2), so |a_lm|^2 has mean 1
        real[..., :, 1:] /= math.sqrt(2.0)
        imag[..., :, 1:] /= math.sqrt(2.0)
        scale = math.sqrt(4.0 * math.pi) / lmax
        coeffs = torch.stack([real, imag], dim=-1) * scale  # [b, c, l, m, 2]
        isht = model.itrans_up
        coeffs = coeffs[..., : isht.mmax, :]  # orders m > l carry no harmonic
        coeffs = coeffs.permute(3, 2, 0, 1, 4).reshape(isht.mmax, lmax, -1)
        return isht(coeffs, batch=batch, channels=self.noise_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, n_in, lat, lon]`` to ``[batch, n_out, lat, lon]`` (random)."""
        x = x.reshape(-1, *x.shape[-3:])
        if self.noise_type == "isotropic":
            noise = self._isotropic_noise(x.shape[0], x.device).to(x.dtype)
        else:
            noise = torch.randn(
                x.shape[0],
                self.noise_channels,
                *x.shape[-2:],
                device=x.device,
                dtype=x.dtype,
            )
        return self.conditional_model(x, noise)
