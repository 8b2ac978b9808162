"""The keys ACE's two SFNO builders share, with ACE's defaults.

ACE's ``SphericalFourierNeuralOperatorNet`` and ``NoiseConditionedSFNO``
(ACE2S) builders accept the same keys for the network's shape (width, depth,
MLP, encoder, skips, checkpointing, data grid) and the same SFNO keys that
have no effect or only one supported value here. Both builder configs inherit
this field set and add their own keys. Each validates the keys itself: the
two builders refuse different values and name themselves in their messages.
"""

from dataclasses import dataclass
from typing import Any


@dataclass
class SFNOBuilderKeys:
    """The keys both SFNO builder configs take (same names, types and defaults).

    Attributes:
        spectral_transform: "sht" (ACE's default); each builder says what
            other values do.
        filter_type: "linear": a learned linear operator on the spherical
            harmonic coefficients.
        residual_filter_factor: accepted for ACE configs; it has no effect in
            ACE's networks (their builders never pass it on), nor here.
        embed_dim: number of feature channels.
        num_layers: number of SFNO blocks.
        use_mlp: whether each block ends with a two-layer pointwise MLP.
        mlp_ratio: hidden width of the block MLP relative to ``embed_dim``.
        activation_function: "gelu", "relu" or "silu".
        encoder_layers: hidden (1x1 convolution + activation) layers of the
            encoder and of the decoder, before their final linear layer.
        pos_embed: add a learned position embedding after the encoder.
        big_skip: the decoder also sees the network input.
        rank: only used by tensor factorizations, which are not supported; any
            value is accepted (no effect, as in ACE).
        factorization: must be null (dense weights).
        separable: must be false.
        complex_network: no effect (as in ACE with the linear filter).
        complex_activation: no effect (as in ACE with the linear filter).
        spectral_layers: no effect (as in ACE with the linear filter).
        checkpointing: activation checkpointing as in ACE: >= 1 encoder and
            decoder, >= 2 also the MLPs, >= 3 every block.
        data_grid: the data grid, "legendre-gauss" (ACE's default) or
            "equiangular".
    """

    spectral_transform: str = "sht"
    filter_type: str = "linear"
    residual_filter_factor: int = 1
    embed_dim: int = 256
    num_layers: int = 12
    use_mlp: bool = True
    mlp_ratio: float = 2.0
    activation_function: str = "gelu"
    encoder_layers: int = 1
    pos_embed: bool = True
    big_skip: bool = True
    rank: float = 1.0
    factorization: str | None = None
    separable: bool = False
    complex_network: bool = True
    complex_activation: str = "real"
    spectral_layers: int = 1
    checkpointing: int = 0
    data_grid: str = "legendre-gauss"

    def network_arguments(self) -> dict[str, Any]:
        """The network arguments both builders take from these keys, by name."""
        return dict(
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            use_mlp=self.use_mlp,
            mlp_ratio=self.mlp_ratio,
            activation_function=self.activation_function,
            encoder_layers=self.encoder_layers,
            pos_embed=self.pos_embed,
            big_skip=self.big_skip,
            checkpointing=self.checkpointing,
            data_grid=self.data_grid,
        )
