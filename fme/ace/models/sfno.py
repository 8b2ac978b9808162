"""The Spherical Fourier Neural Operator network (SFNO) in ACE's layout.

Architecture (Bonev et al. 2023, as in ACE's ``SphericalFourierNeuralOperatorNet``)::

    [input, noise] -> encoder (1x1 convs) -> + position embedding
      -> num_layers x SFNO block
      -> concat [features, input, noise] (big skip) -> decoder (1x1 convs)

    SFNO block(x):
        x_norm = norm0(x)
        y = ISHT(W coeffs(x_norm)) + bias   # filter; r = x_norm on the output grid
        y = norm1(activation(y + inner_skip(r)))
        y = mlp(y)
        return y + r

The first block reads the data grid and the last one writes it; the blocks in
between work on a Legendre-Gauss grid of ``img_shape // scale_factor``, as in
ACE (with ``scale_factor == 1`` and Legendre-Gauss data, ACE's default, no
block resamples). Parameter names and shapes are ACE's (``blocks.<i>.filter.
filter.weight`` etc.), so ``state_dict`` moves between the two unchanged.

Speed: the spectral weights keep ACE's shape ``(in, out, lmax[, mmax], 2)`` but
are stored with the mode axes outermost in memory (the parameter is a strided
view), so the channel mixing is one batched complex matrix product over the
modes with no copy of the weights. Coefficients are in the m-major layout of
:mod:`fme.ace.models.sht`. ACE keeps ``mmax = nlon // 2 + 1`` orders even where
they exceed ``lmax`` (those coefficients are zero); their weights are kept for
the layout but never multiply anything.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fme.ace.models import recomputation
from fme.ace.models.dhconv import analysis_then_dhconv, per_degree_product
from fme.ace.models.diagonal_mix import diagonal_product
from fme.ace.models.mode_major import mode_major_parameter, to_mode_major
from fme.ace.models.pointwise import (
    PointwiseLinear,
    activation_then_linear,
    recomputed_then_linear,
)
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
DATA_GRIDS = ("legendre-gauss", "equiangular")
INTERNAL_GRIDS = ("legendre-gauss", "data")
OPERATOR_TYPES = ("diagonal", "dhconv")
NORMALIZATIONS = ("instance_norm", "layer_norm", "none")


class SpectralConvS2(nn.Module):
    """Spherical convolution: SHT, learned complex channel mixing, inverse SHT, bias.

    ``operator_type="dhconv"`` (Driscoll-Healy): one complex ``[in, out]``
    matrix per degree l, shared by all orders m, so the operator commutes with
    rotations about the polar axis. ``"diagonal"``: one matrix per (l, m).

    Parameters (ACE's shapes): ``weight`` ``(in, out, lmax, 2)`` for dhconv and
    ``(in, out, lmax, mmax, 2)`` for diagonal, the last axis (real, imaginary),
    applied as ``out[o] = sum_i coeff[i] * w[i, o]``; ``bias`` ``(1, out, 1, 1)``
    added to the output field.

    Args:
        forward_transform: the SHT of the input grid.
        inverse_transform: the inverse SHT of the output grid (same modes).
        in_channels: number of input channels.
        out_channels: number of output channels.
        operator_type: "dhconv" or "diagonal".
        mmax: the number of orders of the weight (ACE's, possibly more than the
            transforms keep; the extra ones multiply zero coefficients).
        init_gain: complex weights start with E|w|^2 = init_gain / in_channels.
        weight_layout: "in_out" (ACE's ``SphericalFourierNeuralOperatorNet``)
            or "group_out_in": dhconv only, shape ``(1, lmax, out, in, 2)``
            (ACE's conditional SFNO of ``NoiseConditionedSFNO``).
        round_trip_residual: return the input passed through the forward and
            inverse transforms as the skip, also on the same grid (ACE's
            ``filter_residual``).
        preserve_global_mean: pass the l = 0 coefficients through unchanged
            (ACE's ``filter_preserves_global_mean``; in == out channels).
    """

    def __init__(
        self,
        *,
        forward_transform: SphericalHarmonicTransform,
        inverse_transform: InverseSphericalHarmonicTransform,
        in_channels: int,
        out_channels: int,
        operator_type: str = "diagonal",
        mmax: int | None = None,
        init_gain: float = 1.0,
        weight_layout: str = "in_out",
        round_trip_residual: bool = False,
        preserve_global_mean: bool = False,
    ):
        super().__init__()
        if (forward_transform.lmax, forward_transform.mmax) != (
            inverse_transform.lmax,
            inverse_transform.mmax,
        ):
            raise ValueError("forward and inverse transforms must share lmax and mmax")
        if operator_type not in OPERATOR_TYPES:
            raise ValueError(
                f"operator_type must be one of {OPERATOR_TYPES}, got {operator_type!r}"
            )
        self.forward_transform = forward_transform
        self.inverse_transform = inverse_transform
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.operator_type = operator_type
        self.lmax = forward_transform.lmax
        self.mmax = forward_transform.mmax
        self.weight_mmax = self.mmax if mmax is None else mmax
        if self.weight_mmax < self.mmax:
            raise ValueError(
                f"mmax of the weight ({self.weight_mmax}) must be >= the "
                f"transforms' ({self.mmax})"
            )
        self.resamples = round_trip_residual or (
            (forward_transform.nlat, forward_transform.nlon)
            != (inverse_transform.nlat, inverse_transform.nlon)
            or forward_transform.grid != inverse_transform.grid
        )
        if weight_layout not in ("in_out", "group_out_in"):
            raise ValueError(f"unknown weight_layout {weight_layout!r}")
        if weight_layout == "group_out_in" and operator_type != "dhconv":
            raise ValueError("weight_layout group_out_in needs operator_type dhconv")
        if preserve_global_mean and in_channels != out_channels:
            raise ValueError("preserve_global_mean needs in_channels == out_channels")
        self.weight_layout = weight_layout
        self.preserve_global_mean = preserve_global_mean
        modes = (
            [self.lmax] if operator_type == "dhconv" else [self.lmax, self.weight_mmax]
        )
        # real and imaginary parts each carry half the variance
        std = math.sqrt(init_gain / in_channels / 2.0)
        weight = mode_major_parameter(
            in_channels=in_channels, out_channels=out_channels, modes=modes, std=std
        )
        if weight_layout == "group_out_in":
            # (in, out, l, 2) -> (1, l, out, in, 2), still [l, in, out, 2] in memory
            weight = nn.Parameter(weight.detach().permute(2, 1, 0, 3)[None])
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"lmax={self.lmax}, mmax={self.mmax}, operator_type={self.operator_type}"
        )

    def mix(self, coeffs: torch.Tensor, *, batch: int) -> torch.Tensor:
        """Apply the learned weights to m-major coefficients of the input channels.

        Args:
            coeffs: ``[mmax, lmax, batch * in_channels * 2]``.
            batch: the batch size packed in the last axis of ``coeffs``.

        Returns:
            ``[mmax, lmax, batch * out_channels * 2]`` coefficients.
        """
        n_m, n_l, n_in, n_out = (
            self.mmax,
            self.lmax,
            self.in_channels,
            self.out_channels,
        )
        spec = torch.view_as_complex(coeffs.view(n_m, n_l, batch, n_in, 2))
        if self.operator_type == "dhconv":
            if self.weight_layout == "group_out_in":
                weight = self.weight[0].permute(0, 2, 1, 3).contiguous()
            else:
                weight = to_mode_major(self.weight).contiguous()
            # [l, in, out]: one matrix per l, shared by all m; rows are (m, batch)
            rows = spec.transpose(0, 1).reshape(n_l, n_m * batch, n_in)
            mixed = per_degree_product(rows, torch.view_as_complex(weight), batch=batch)
            mixed = mixed.view(n_l, n_m, batch, n_out).transpose(0, 1)
            out = torch.view_as_real(mixed).reshape(n_m, n_l, batch * n_out * 2)
        else:
            mixed = diagonal_product(spec, self.weight)
            out = torch.view_as_real(mixed).view(n_m, n_l, batch * n_out * 2)
        if self.preserve_global_mean:
            # (m, l) = (0, 0) is the global mean: not filtered
            m0 = torch.cat([coeffs[:1, :1], out[:1, 1:]], dim=1)
            out = torch.cat([m0, out[1:]], dim=0)
        return out

    def _stores_only_the_field(self, x: torch.Tensor) -> bool:
        """Whether backward keeps the input field ``x`` rather than its spectrum
        (see ``fme.ace.models.dhconv``): a plain dhconv on one grid, on a
        field large enough to recompute (``recomputation``)."""
        return (
            self.operator_type == "dhconv"
            and self.weight_layout == "in_out"
            and not self.preserve_global_mean
            and not self.resamples
            and torch.is_grad_enabled()
            and recomputation.recomputes(x.numel())
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve ``[batch, in_channels, lat, lon]`` given on the input grid.

        The transforms, the mixing and the bias run in float32, also under
        autocast (as in ACE).

        Returns:
            The convolved field ``[batch, out_channels, *output grid]`` and the
            input itself on the output grid (``x`` if the grids are the same,
            else its spectral resampling), for skip connections.
        """
        batch, dtype = x.shape[0], x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            if dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            if self._stores_only_the_field(x):
                mixed = analysis_then_dhconv(x, self)
            else:
                coeffs = self.forward_transform(x)
                mixed = self.mix(coeffs, batch=batch)
            out = self.inverse_transform(mixed, batch=batch, channels=self.out_channels)
            out = out + self.bias.to(out.dtype)
            if self.resamples:
                x = self.inverse_transform(
                    coeffs, batch=batch, channels=self.in_channels
                )
        return out.to(dtype), x.to(dtype)


def _normalization(kind: str, channels: int, grid: tuple[int, int]) -> nn.Module:
    if kind == "instance_norm":
        return nn.InstanceNorm2d(channels, eps=1e-6, affine=True)
    if kind == "layer_norm":
        return nn.LayerNorm(grid, eps=1e-6)
    return nn.Identity()


class FilterLayer(nn.Module):
    """ACE's ``SpectralFilterLayer``: a container of the spectral convolution."""

    def __init__(self, conv: SpectralConvS2):
        super().__init__()
        self.filter = conv


class PointwiseMLP(nn.Module):
    """ACE's block MLP: ``fwd = [1x1 conv, activation, 1x1 conv]``.

    Args:
        embed_dim: input and output channels.
        hidden: hidden channels.
        activation: the activation module class.
        branch_gain: initial output variance per unit input variance.
        checkpointed: recompute its activations in backward.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        hidden: int,
        activation: type[nn.Module],
        branch_gain: float,
        checkpointed: bool,
    ):
        super().__init__()
        self.fwd = nn.Sequential(
            PointwiseLinear(embed_dim, hidden, init_gain=2.0, conv_shape=True),
            activation(),
            PointwiseLinear(hidden, embed_dim, init_gain=branch_gain, conv_shape=True),
        )
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointed:
            return checkpoint(self._lean_forward, x, use_reentrant=False)
        return self._lean_forward(x)

    def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fwd(x)``, not storing the activation's output for backward."""
        fc1, activation, fc2 = self.fwd
        return activation_then_linear(fc1(x), activation, fc2)


class SFNOBlock(nn.Module):
    """One SFNO block: norm, spectral filter + 1x1 skip, activation, norm, MLP.

    Args:
        forward_transform: the SHT of the block's input grid.
        inverse_transform: the inverse SHT of the block's output grid.
        embed_dim: number of channels.
        operator_type: "dhconv" or "diagonal".
        weight_mmax: orders of the spectral weight (ACE's count).
        activation: the activation module class.
        norm0: normalisation of the input.
        norm1: normalisation after the activation.
        use_mlp: whether to apply the two-layer pointwise MLP at the end.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        branch_gain: initial variance of the residual branch per unit variance
            of its input; below 1 keeps a deep stack without normalization
            from growing geometrically at initialisation.
        checkpoint_mlp: recompute the MLP's activations in backward.
        weight_layout, round_trip_residual, preserve_global_mean: see
            :class:`SpectralConvS2` (ACE's conditional SFNO sets them).

    The norms are called as ``norm(x)``, or ``norm(x, noise)`` when the block
    is called with noise (the conditional norms of ``NoiseConditionedSFNO``).
    """

    def __init__(
        self,
        *,
        forward_transform: SphericalHarmonicTransform,
        inverse_transform: InverseSphericalHarmonicTransform,
        embed_dim: int,
        operator_type: str,
        weight_mmax: int | None,
        activation: type[nn.Module],
        norm0: nn.Module,
        norm1: nn.Module,
        use_mlp: bool,
        mlp_ratio: float,
        branch_gain: float = 1.0,
        checkpoint_mlp: bool = False,
        weight_layout: str = "in_out",
        round_trip_residual: bool = False,
        preserve_global_mean: bool = False,
    ):
        super().__init__()
        self.norm0 = norm0
        # ACE's nesting: blocks.<i>.filter.filter.{weight,bias}
        self.filter = FilterLayer(
            SpectralConvS2(
                forward_transform=forward_transform,
                inverse_transform=inverse_transform,
                in_channels=embed_dim,
                out_channels=embed_dim,
                operator_type=operator_type,
                mmax=weight_mmax,
                init_gain=1.0 if use_mlp else branch_gain,
                weight_layout=weight_layout,
                round_trip_residual=round_trip_residual,
                preserve_global_mean=preserve_global_mean,
            )
        )
        self.inner_skip = PointwiseLinear(
            embed_dim,
            embed_dim,
            init_gain=1.0 if use_mlp else branch_gain,
            conv_shape=True,
        )
        self.activation = activation()
        self.norm1 = norm1
        self.mlp: PointwiseMLP | None = None
        if use_mlp:
            self.mlp = PointwiseMLP(
                embed_dim=embed_dim,
                hidden=int(embed_dim * mlp_ratio),
                activation=activation,
                branch_gain=branch_gain,
                checkpointed=checkpoint_mlp,
            )

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map ``[batch, embed_dim, *input grid]`` to ``[..., *output grid]``."""
        context = () if noise is None else (noise,)
        y, residual = self.filter.filter(self.norm0(x, *context))
        y = y + self.inner_skip(residual)
        mlp = self.mlp
        if (
            mlp is not None
            and noise is None
            and not mlp.checkpointed
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled(y.device.type)
        ):
            # On large fields only y is stored for backward: the MLP's hidden
            # activation is recomputed there from y (elementwise work and the
            # first of the MLP's two matrix products); on small ones
            # recomputed_then_linear stores it (see recomputation).
            fc1, activation, fc2 = mlp.fwd

            def hidden(y: torch.Tensor) -> torch.Tensor:
                return activation(fc1(self._activation_and_norm(y)))

            params = [*self.norm1.parameters(), *fc1.parameters()]
            return recomputed_then_linear(y, hidden, fc2, params) + residual
        if torch.is_grad_enabled():
            # the activation's output is recomputed in backward, not stored
            y = checkpoint(self._activation_and_norm, y, *context, use_reentrant=False)
        else:
            y = self._activation_and_norm(y, *context)
        if self.mlp is not None:
            y = self.mlp(y)
        return y + residual

    def _activation_and_norm(
        self, y: torch.Tensor, *context: torch.Tensor
    ) -> torch.Tensor:
        return self.norm1(self.activation(y), *context)


def coder(
    *,
    n_in: int,
    hidden: int,
    n_out: int,
    n_hidden_layers: int,
    activation: type[nn.Module],
) -> nn.Sequential:
    """ACE's encoder/decoder: hidden 1x1 convs with bias, then one without.

    Args:
        n_in: input channels.
        hidden: channels of the hidden layers.
        n_out: output channels.
        n_hidden_layers: number of (1x1 conv + activation) layers first.
        activation: the activation module class.
    """
    layers: list[nn.Module] = []
    current = n_in
    for _ in range(n_hidden_layers):
        layers += [
            PointwiseLinear(current, hidden, init_gain=2.0, conv_shape=True),
            activation(),
        ]
        current = hidden
    layers.append(PointwiseLinear(current, n_out, bias=False, conv_shape=True))
    return nn.Sequential(*layers)


def decode(
    decoder: nn.Sequential, h: torch.Tensor, skip: torch.Tensor | None
) -> torch.Tensor:
    """Apply a :func:`coder` to ``h`` or, with a big skip, to ``cat([h, skip])``.

    The concatenation is not materialised: the first layer multiplies each
    part by its block of columns (:meth:`PointwiseLinear.forward_concat`).
    """
    if skip is None:
        return decoder(h)
    first = decoder[0]
    assert isinstance(first, PointwiseLinear)
    out = first.forward_concat([h, skip])
    for i in range(1, len(decoder)):
        out = decoder[i](out)
    return out


class SFNOStack(nn.Module):
    """Encoder, position embedding, SFNO blocks and decoder (ACE's names).

    What ``SphericalFourierNeuralOperatorNet`` and the conditional SFNO of
    ``NoiseConditionedSFNO`` share; each adds its own input and output steps.

    Args:
        n_in: input channels of the encoder.
        n_skip: channels of the big skip the decoder also sees (0: none).
        n_out: output channels.
        img_shape: (lat, lon) of the data grid.
        embed_dim: feature channels.
        encoder_layers: hidden layers of the encoder and of the decoder.
        activation: the activation module class.
        pos_embed: learned position embedding after the encoder.
        checkpointing: activation checkpointing as in ACE: >= 1 encoder and
            decoder, >= 3 every block (>= 2, the MLPs, is the blocks' own).
        make_blocks: builds the blocks (called after the encoder and position
            embedding are made, before the decoder).
    """

    def __init__(
        self,
        *,
        n_in: int,
        n_skip: int,
        n_out: int,
        img_shape: tuple[int, int],
        embed_dim: int,
        encoder_layers: int,
        activation: type[nn.Module],
        pos_embed: bool,
        checkpointing: int,
        make_blocks: Callable[[], list[SFNOBlock]],
    ):
        super().__init__()
        self.img_shape = img_shape
        self.checkpointing = checkpointing
        self.encoder = coder(
            n_in=n_in,
            hidden=embed_dim,
            n_out=embed_dim,
            n_hidden_layers=encoder_layers,
            activation=activation,
        )
        self.pos_embed: nn.Parameter | None = None
        if pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *img_shape))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(make_blocks())
        self.decoder = coder(
            n_in=embed_dim + n_skip,
            hidden=embed_dim,
            n_out=n_out,
            n_hidden_layers=encoder_layers,
            activation=activation,
        )

    def run_stack(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode ``x``, run the blocks (given ``noise``), decode with ``skip``."""
        if self.checkpointing >= 1:
            h = checkpoint(self.encoder, x, use_reentrant=False)
        else:
            h = self.encoder(x)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        for block in self.blocks:
            if self.checkpointing >= 3:
                h = checkpoint(block, h, noise, use_reentrant=False)
            else:
                h = block(h, noise)
        if self.checkpointing >= 1:
            return checkpoint(decode, self.decoder, h, skip, use_reentrant=False)
        return decode(self.decoder, h, skip)


class SphericalFourierNeuralOperatorNet(SFNOStack):
    """SFNO mapping ``[batch, n_in, lat, lon]`` to ``[batch, n_out, lat, lon]``.

    Built by ``SphericalFourierNeuralOperatorConfig`` (``fme.ace.models.
    sfno_config``), whose fields document the arguments.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        num_layers: int,
        operator_type: str,
        scale_factor: int,
        hard_thresholding_fraction: float,
        normalization_layer: str,
        use_mlp: bool,
        mlp_ratio: float,
        activation_function: str,
        encoder_layers: int,
        pos_embed: bool,
        big_skip: bool,
        checkpointing: int,
        data_grid: str,
        internal_grid: str,
        noise_channels: int,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ):
        n_lat, n_lon = img_shape
        inner_lat, inner_lon = n_lat // scale_factor, n_lon // scale_factor
        lmax = int(inner_lat * hard_thresholding_fraction)
        weight_mmax = int((inner_lon // 2 + 1) * hard_thresholding_fraction)
        # Orders m >= lmax have no harmonics (m <= l): the transforms skip them.
        mmax = min(weight_mmax, lmax)
        if lmax < 1 or mmax < 1:
            raise ValueError(
                f"img_shape {img_shape} with scale_factor={scale_factor} and "
                f"hard_thresholding_fraction={hard_thresholding_fraction} "
                "keeps no spherical harmonic; use a larger grid or smaller factors"
            )
        activation = ACTIVATIONS[activation_function]
        n_in_total = n_in_channels + noise_channels
        data = dict(nlat=n_lat, nlon=n_lon, grid=data_grid, lmax=lmax, mmax=mmax)
        if internal_grid == "data":
            inner = data
        else:
            inner = dict(
                nlat=inner_lat,
                nlon=inner_lon,
                grid="legendre-gauss",
                lmax=lmax,
                mmax=mmax,
            )
        # One instance per distinct grid, shared by the blocks that use it.
        shts: dict[tuple, SphericalHarmonicTransform] = {}
        ishts: dict[tuple, InverseSphericalHarmonicTransform] = {}

        def sht(kw: dict) -> SphericalHarmonicTransform:
            key = tuple(sorted(kw.items()))
            if key not in shts:
                shts[key] = SphericalHarmonicTransform(**kw)
            return shts[key]

        def isht(kw: dict) -> InverseSphericalHarmonicTransform:
            key = tuple(sorted(kw.items()))
            if key not in ishts:
                ishts[key] = InverseSphericalHarmonicTransform(**kw)
            return ishts[key]

        data_shape = (n_lat, n_lon)
        inner_shape = data_shape if internal_grid == "data" else (inner_lat, inner_lon)
        # Without normalization the residual stream would double its variance
        # in every block; small branches keep it O(1) at initialisation.
        normalized = normalization_layer != "none"
        branch_gain = 1.0 if normalized else 1.0 / num_layers

        def make_blocks() -> list[SFNOBlock]:
            blocks = []
            for i in range(num_layers):
                first, last = i == 0, i == num_layers - 1
                # ACE's layer-norm shapes: (data, inner) for the first block,
                # (inner, data) for the last, (inner, inner) between.
                if first:
                    norm_grids = (data_shape, inner_shape)
                elif last:
                    norm_grids = (inner_shape, data_shape)
                else:
                    norm_grids = (inner_shape, inner_shape)
                norms = [
                    _normalization(normalization_layer, embed_dim, grid)
                    for grid in norm_grids
                ]
                blocks.append(
                    SFNOBlock(
                        forward_transform=sht(data if first else inner),
                        inverse_transform=isht(data if last else inner),
                        embed_dim=embed_dim,
                        operator_type=operator_type,
                        weight_mmax=weight_mmax,
                        activation=activation,
                        norm0=norms[0],
                        norm1=norms[1],
                        use_mlp=use_mlp,
                        mlp_ratio=mlp_ratio,
                        branch_gain=branch_gain,
                        checkpoint_mlp=checkpointing >= 2,
                    )
                )
            return blocks

        super().__init__(
            n_in=n_in_total,
            n_skip=n_in_total if big_skip else 0,
            n_out=n_out_channels,
            img_shape=(n_lat, n_lon),
            embed_dim=embed_dim,
            encoder_layers=encoder_layers,
            activation=activation,
            pos_embed=pos_embed,
            checkpointing=checkpointing,
            make_blocks=make_blocks,
        )
        self.noise_channels = noise_channels
        self.big_skip = big_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, n_in_channels, lat, lon]`` to ``[batch, n_out, lat, lon]``.

        With ``noise_channels > 0`` every call draws fresh standard-normal noise
        (from torch's global generator), so the output is random.
        """
        if tuple(x.shape[-2:]) != self.img_shape:
            raise ValueError(
                f"expected input of (lat, lon) shape {self.img_shape}, "
                f"got {tuple(x.shape[-2:])}"
            )
        if self.noise_channels > 0:
            noise = torch.randn(
                x.shape[0],
                self.noise_channels,
                *self.img_shape,
                device=x.device,
                dtype=x.dtype,
            )
            x = torch.cat([x, noise], dim=1)
        return self.run_stack(x, x if self.big_skip else None)
