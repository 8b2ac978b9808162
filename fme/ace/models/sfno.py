"""The Spherical Fourier Neural Operator network (SFNO), on torch-harmonics.

Architecture (Bonev et al. 2023, as configured in ACE)::

    [input, noise] -> encoder (1x1) -> + position embedding
      -> num_layers x SFNO block
      -> concat [features, input, noise] (big skip) -> decoder (1x1) -> output

    SFNO block(x):
        x_norm = norm0(x)
        coeffs = SHT(x_norm)                 # data or internal grid
        y = ISHT(W_l coeffs) + inner_skip(r) # r = x_norm resampled to output grid
        y = mlp(norm1(activation(y)))
        return y + r

The first block reads the data grid and the last one writes it. With
``scale_factor > 1`` the features in between live on a Legendre-Gauss grid of
``img_shape // scale_factor`` (as in ACE); with ``scale_factor == 1`` they stay
on the data grid, so no block has to resample its skip connection (ACE moves to
a Legendre-Gauss grid of the same size, which costs two extra inverse
transforms). Coefficients are kept in the m-major layout of
:mod:`fme.ace.models.sht`, so that the channel mixing is one batched complex
matrix product over l: no Python loops over degrees or orders.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from fme.ace.models.pointwise import PointwiseLinear
from fme.ace.models.registry import MODULE_REGISTRY, check_minimums
from fme.ace.models.sht import (
    InverseSphericalHarmonicTransform,
    SphericalHarmonicTransform,
)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
_GRIDS = ("equiangular", "legendre-gauss")
_INTERNAL_GRID = "legendre-gauss"
_OPERATOR_TYPES = ("dhconv", "diagonal")
_FILTER_TYPES = ("linear",)
_NORMALIZATIONS = ("instance_norm", "none")


class SpectralConvS2(nn.Module):
    """Spherical convolution: SHT, learned complex channel mixing, inverse SHT.

    ``operator_type="dhconv"`` (Driscoll-Healy): the mixing matrix depends on the
    degree l only, so the operator commutes with rotations about the polar axis
    and maps each spherical harmonic Y_l^m to a combination of Y_l^m across
    channels. ``"diagonal"``: one matrix per (l, m).

    The parameter ``weight`` is the real view of a batch of complex
    ``[in_channels, out_channels]`` matrices, one per mode, applied as
    ``out = sum_in coeff[in] * w[in, out]``: shape ``[lmax, in_channels,
    out_channels, 2]`` for dhconv and ``[lmax, mmax, in_channels, out_channels,
    2]`` for diagonal, the last axis being (real, imaginary). (ACE stores the
    same numbers with the mode axes last; putting them first makes the matrices
    contiguous for the batched product, which saves a copy of the weights in
    every forward and backward pass.)

    Args:
        forward_transform: the SHT of the input grid.
        inverse_transform: the inverse SHT of the output grid (same lmax, mmax).
        in_channels: number of input channels.
        out_channels: number of output channels.
        operator_type: "dhconv" or "diagonal".
        init_gain: complex weights start with E|w|^2 = init_gain / in_channels,
            preserving the variance of a unit-variance input times init_gain.
    """

    def __init__(
        self,
        *,
        forward_transform: SphericalHarmonicTransform,
        inverse_transform: InverseSphericalHarmonicTransform,
        in_channels: int,
        out_channels: int,
        operator_type: str = "dhconv",
        init_gain: float = 1.0,
    ):
        super().__init__()
        if (forward_transform.lmax, forward_transform.mmax) != (
            inverse_transform.lmax,
            inverse_transform.mmax,
        ):
            raise ValueError("forward and inverse transforms must share lmax and mmax")
        if operator_type not in _OPERATOR_TYPES:
            raise ValueError(
                f"operator_type must be one of {_OPERATOR_TYPES}, got {operator_type!r}"
            )
        self.forward_transform = forward_transform
        self.inverse_transform = inverse_transform
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.operator_type = operator_type
        self.lmax = forward_transform.lmax
        self.mmax = forward_transform.mmax
        self.resamples = (forward_transform.nlat, forward_transform.nlon) != (
            inverse_transform.nlat,
            inverse_transform.nlon,
        ) or forward_transform.grid != inverse_transform.grid
        modes = [self.lmax] if operator_type == "dhconv" else [self.lmax, self.mmax]
        # real and imaginary parts each carry half the variance
        std = math.sqrt(init_gain / in_channels / 2.0)
        self.weight = nn.Parameter(
            torch.randn(*modes, in_channels, out_channels, 2) * std
        )

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
        weight = torch.view_as_complex(self.weight)
        if self.operator_type == "dhconv":
            # one [in, out] matrix per l, shared by all m: rows are (m, batch)
            rows = spec.transpose(0, 1).reshape(n_l, n_m * batch, n_in)
            mixed = torch.bmm(rows, weight)
        else:
            rows = spec.transpose(0, 1).reshape(n_l * n_m, batch, n_in)
            mixed = torch.bmm(rows, weight.view(n_l * n_m, n_in, n_out))
        mixed = mixed.view(n_l, n_m, batch, n_out).transpose(0, 1)
        return torch.view_as_real(mixed).reshape(n_m, n_l, batch * n_out * 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolve ``[batch, in_channels, lat, lon]`` given on the input grid.

        Half-precision inputs are transformed in float32, also under autocast.

        Returns:
            The convolved field ``[batch, out_channels, *output grid]`` and the
            input itself on the output grid (``x`` if the grids are the same,
            else its spectral resampling), for skip connections.
        """
        batch, dtype = x.shape[0], x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            if dtype in (torch.float16, torch.bfloat16):
                x = x.float()
            coeffs = self.forward_transform(x)
            out = self.inverse_transform(
                self.mix(coeffs, batch=batch), batch=batch, channels=self.out_channels
            )
            if self.resamples:
                x = self.inverse_transform(
                    coeffs, batch=batch, channels=self.in_channels
                )
        return out.to(dtype), x.to(dtype)


def _normalization(kind: str, channels: int) -> nn.Module:
    if kind == "instance_norm":
        return nn.InstanceNorm2d(channels, eps=1e-6, affine=True)
    return nn.Identity()


class SFNOBlock(nn.Module):
    """One SFNO block: norm, spectral conv + 1x1 skip, activation, norm, MLP.

    Args:
        forward_transform: the SHT of the block's input grid.
        inverse_transform: the inverse SHT of the block's output grid.
        embed_dim: number of channels.
        operator_type: "dhconv" or "diagonal".
        activation: the activation module class.
        normalization: "instance_norm" or "none".
        use_mlp: whether to apply a two-layer pointwise MLP at the end.
        mlp_ratio: hidden width of the MLP relative to ``embed_dim``.
        branch_gain: initial variance of the residual branch per unit variance
            of its input; below 1 keeps a deep stack without normalization
            from growing geometrically at initialisation.
    """

    def __init__(
        self,
        *,
        forward_transform: SphericalHarmonicTransform,
        inverse_transform: InverseSphericalHarmonicTransform,
        embed_dim: int,
        operator_type: str,
        activation: type[nn.Module],
        normalization: str,
        use_mlp: bool,
        mlp_ratio: float,
        branch_gain: float = 1.0,
    ):
        super().__init__()
        self.norm0 = _normalization(normalization, embed_dim)
        self.spectral_conv = SpectralConvS2(
            forward_transform=forward_transform,
            inverse_transform=inverse_transform,
            in_channels=embed_dim,
            out_channels=embed_dim,
            operator_type=operator_type,
            init_gain=1.0 if use_mlp else branch_gain,
        )
        self.inner_skip = PointwiseLinear(
            embed_dim, embed_dim, init_gain=1.0 if use_mlp else branch_gain
        )
        self.activation = activation()
        self.norm1 = _normalization(normalization, embed_dim)
        self.mlp: nn.Sequential | None = None
        if use_mlp:
            hidden = max(1, int(embed_dim * mlp_ratio))
            self.mlp = nn.Sequential(
                PointwiseLinear(embed_dim, hidden, init_gain=2.0),
                activation(),
                PointwiseLinear(hidden, embed_dim, init_gain=branch_gain),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, embed_dim, *input grid]`` to ``[..., *output grid]``."""
        y, residual = self.spectral_conv(self.norm0(x))
        y = self.norm1(self.activation(y + self.inner_skip(residual)))
        if self.mlp is not None:
            y = self.mlp(y)
        return y + residual


class SphericalFourierNeuralOperatorNet(nn.Module):
    """SFNO mapping ``[batch, n_in, lat, lon]`` to ``[batch, n_out, lat, lon]``.

    Built by :class:`SphericalFourierNeuralOperatorConfig`; see its fields.
    """

    def __init__(
        self,
        config: "SphericalFourierNeuralOperatorConfig",
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ):
        super().__init__()
        n_lat, n_lon = img_shape
        inner_lat, inner_lon = (
            n_lat // config.scale_factor,
            n_lon // config.scale_factor,
        )
        lmax = int(inner_lat * config.hard_thresholding_fraction)
        mmax = min(int((inner_lon // 2 + 1) * config.hard_thresholding_fraction), lmax)
        if lmax < 1 or mmax < 1:
            raise ValueError(
                f"img_shape {img_shape} with scale_factor={config.scale_factor} and "
                f"hard_thresholding_fraction={config.hard_thresholding_fraction} "
                "keeps no spherical harmonic; use a larger grid or smaller factors"
            )
        self.img_shape = (n_lat, n_lon)
        self.noise_channels = config.noise_channels
        self.big_skip = config.big_skip
        activation = _ACTIVATIONS[config.activation_function]
        embed_dim = config.embed_dim
        n_in_total = n_in_channels + config.noise_channels

        encoder: list[nn.Module] = []
        current = n_in_total
        for _ in range(config.encoder_layers):
            encoder += [
                PointwiseLinear(current, embed_dim, init_gain=2.0),
                activation(),
            ]
            current = embed_dim
        encoder.append(PointwiseLinear(current, embed_dim, bias=False))
        self.encoder = nn.Sequential(*encoder)

        self.pos_embed: nn.Parameter | None = None
        if config.pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, n_lat, n_lon))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

        data = dict(nlat=n_lat, nlon=n_lon, grid=config.grid, lmax=lmax, mmax=mmax)
        if config.scale_factor == 1:
            inner = data
        else:
            inner = dict(
                nlat=inner_lat,
                nlon=inner_lon,
                grid=_INTERNAL_GRID,
                lmax=lmax,
                mmax=mmax,
            )
        # Without normalization the residual stream would double its variance
        # in every block; small branches keep it O(1) at initialisation.
        normalized = config.normalization_layer != "none"
        branch_gain = 1.0 if normalized else 1.0 / config.num_layers
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

        self.blocks = nn.ModuleList(
            SFNOBlock(
                forward_transform=sht(data if i == 0 else inner),
                inverse_transform=isht(data if i == config.num_layers - 1 else inner),
                embed_dim=embed_dim,
                operator_type=config.operator_type,
                activation=activation,
                normalization=config.normalization_layer,
                use_mlp=config.use_mlp,
                mlp_ratio=config.mlp_ratio,
                branch_gain=branch_gain,
            )
            for i in range(config.num_layers)
        )

        decoder: list[nn.Module] = []
        current = embed_dim + (n_in_total if config.big_skip else 0)
        for _ in range(config.encoder_layers):
            decoder += [
                PointwiseLinear(current, embed_dim, init_gain=2.0),
                activation(),
            ]
            current = embed_dim
        decoder.append(PointwiseLinear(current, n_out_channels, bias=False))
        self.decoder = nn.Sequential(*decoder)

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
        h = self.encoder(x)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        for block in self.blocks:
            h = block(h)
        if self.big_skip:
            h = torch.cat([h, x], dim=1)
        return self.decoder(h)


@MODULE_REGISTRY.register("SphericalFourierNeuralOperatorNet")
@dataclass
class SphericalFourierNeuralOperatorConfig:
    """Configuration of the SFNO network (keys and meanings as in ACE).

    Attributes:
        embed_dim: number of feature channels inside the network.
        num_layers: number of SFNO blocks (>= 1).
        filter_type: kind of spectral filter; only "linear" (a learned linear
            operator on the coefficients) is available.
        operator_type: "dhconv" (weights per degree l, shared across orders m:
            rotation-equivariant about the polar axis) or "diagonal" (weights
            per (l, m)).
        scale_factor: if > 1, the features between the first and the last
            block live on a Legendre-Gauss grid of ``img_shape // scale_factor``
            (and degrees are limited accordingly); 1 keeps the data grid.
        hard_thresholding_fraction: fraction in (0, 1] of the degrees and
            orders kept by the spectral convolutions.
        use_mlp: whether each block ends with a two-layer pointwise MLP.
        mlp_ratio: hidden width of that MLP relative to ``embed_dim``.
        activation_function: "gelu", "relu" or "silu".
        encoder_layers: number of hidden (1x1 convolution + activation) layers
            of the encoder and of the decoder, before their final linear layer.
        pos_embed: whether to add a learned position embedding (one value per
            channel and grid point) after the encoder. Without it (and without
            noise), shifting the input in longitude by a multiple of
            ``scale_factor`` grid points shifts the output alike.
        big_skip: whether the decoder also sees the network input.
        normalization_layer: "instance_norm" or "none".
        grid: the data grid, "equiangular" (poles included) or "legendre-gauss".
        noise_channels: number of standard-normal noise channels appended to
            the input on every call, making the network stochastic (needed for
            ensemble losses such as CRPS). 0 gives a deterministic network.
    """

    embed_dim: int = 256
    num_layers: int = 12
    filter_type: str = "linear"
    operator_type: str = "dhconv"
    scale_factor: int = 1
    hard_thresholding_fraction: float = 1.0
    use_mlp: bool = True
    mlp_ratio: float = 2.0
    activation_function: str = "gelu"
    encoder_layers: int = 1
    pos_embed: bool = True
    big_skip: bool = True
    normalization_layer: str = "instance_norm"
    grid: str = "equiangular"
    noise_channels: int = 0

    def __post_init__(self):
        check_minimums(
            self,
            {
                "embed_dim": 1,
                "num_layers": 1,
                "scale_factor": 1,
                "encoder_layers": 0,
                "noise_channels": 0,
            },
        )
        if not 0.0 < self.hard_thresholding_fraction <= 1.0:
            raise ValueError(
                "hard_thresholding_fraction must be in (0, 1], got "
                f"{self.hard_thresholding_fraction}"
            )
        if self.mlp_ratio <= 0.0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name, allowed in [
            ("filter_type", _FILTER_TYPES),
            ("operator_type", _OPERATOR_TYPES),
            ("activation_function", tuple(_ACTIVATIONS)),
            ("normalization_layer", _NORMALIZATIONS),
            ("grid", _GRIDS),
        ]:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {value!r}"
                )

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the network for the given channel counts and (lat, lon) shape."""
        return SphericalFourierNeuralOperatorNet(
            self,
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            img_shape=img_shape,
        )
