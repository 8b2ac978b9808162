"""The ``SphericalFourierNeuralOperatorNet`` builder config: ACE's keys and values.

Every key of the released ACE builder of that name is accepted. A value ACE
accepts but that is not implemented here is refused when the config is loaded,
naming the key and the supported values.
"""

from dataclasses import dataclass

from torch import nn

from fme.ace.models.registry import MODULE_REGISTRY, check_builder_keys
from fme.ace.models.sfno import (
    ACTIVATIONS,
    DATA_GRIDS,
    INTERNAL_GRIDS,
    NORMALIZATIONS,
    OPERATOR_TYPES,
    SphericalFourierNeuralOperatorNet,
)


@MODULE_REGISTRY.register("SphericalFourierNeuralOperatorNet")
@dataclass
class SphericalFourierNeuralOperatorConfig:
    """ACE's ``SphericalFourierNeuralOperatorNet`` builder (same keys, defaults, meaning).

    The built network has ACE's ``state_dict`` names and shapes, so weights
    move between the two both ways.

    Attributes:
        spectral_transform: "sht" (the only one ACE can build with a linear
            filter).
        filter_type: "linear": a learned linear operator on the coefficients.
            ACE's "non-linear" spectral attention is not supported here.
        operator_type: "diagonal" (one complex matrix per (l, m), ACE's
            default) or "dhconv" (one per degree l, shared across orders m).
        scale_factor: the blocks between the first and the last work on a
            Legendre-Gauss grid of ``img_shape // scale_factor``.
        residual_filter_factor: accepted for ACE configs; it has no effect in
            ACE's network (its builder never passes it on), nor here.
        embed_dim: number of feature channels.
        num_layers: number of SFNO blocks.
        hard_thresholding_fraction: fraction in (0, 1] of the degrees and
            orders kept.
        normalization_layer: "instance_norm", "layer_norm" (over the grid
            points of each channel, one affine weight per grid point) or
            "none".
        use_mlp: whether each block ends with a two-layer pointwise MLP.
        activation_function: "gelu", "relu" or "silu".
        encoder_layers: hidden (1x1 convolution + activation) layers of the
            encoder and of the decoder, before their final linear layer.
        pos_embed: add a learned position embedding after the encoder.
        big_skip: the decoder also sees the network input.
        rank: only used by tensor factorizations, which are not supported; any
            value is accepted (no effect, as in ACE without ``factorization``).
        factorization: must be null (dense weights); ACE's tensorly
            factorizations are not supported here.
        separable: must be false; ACE's separable contraction fails when run.
        complex_network: no effect with the linear filter (as in ACE).
        complex_activation: no effect with the linear filter (as in ACE).
        spectral_layers: no effect with the linear filter (as in ACE).
        checkpointing: activation checkpointing as in ACE: >= 1 encoder and
            decoder, >= 2 also the MLPs, >= 3 every block.
        data_grid: the data grid, "legendre-gauss" (ACE's default) or
            "equiangular".
        mlp_ratio: (ours) hidden width of the block MLP relative to
            ``embed_dim``; ACE's builder fixes it at 2.
        noise_channels: (ours) standard-normal noise channels appended to the
            input on every call, making the network stochastic.
        internal_grid: (ours) "legendre-gauss" puts the blocks between the
            first and the last on a Legendre-Gauss grid, as ACE does; "data"
            keeps them on the data grid (only with ``scale_factor: 1``),
            which saves two transforms per block for equiangular data and is
            the layout of this project's checkpoints before format 2.
    """

    spectral_transform: str = "sht"
    filter_type: str = "linear"
    operator_type: str = "diagonal"
    scale_factor: int = 1
    residual_filter_factor: int = 1
    embed_dim: int = 256
    num_layers: int = 12
    hard_thresholding_fraction: float = 1.0
    normalization_layer: str = "instance_norm"
    use_mlp: bool = True
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
    mlp_ratio: float = 2.0
    noise_channels: int = 0
    internal_grid: str = "legendre-gauss"

    def __post_init__(self):
        check_builder_keys(
            self,
            builder="SphericalFourierNeuralOperatorNet",
            minimums={
                "embed_dim": 1,
                "num_layers": 1,
                "scale_factor": 1,
                "residual_filter_factor": 1,
                "encoder_layers": 0,
                "noise_channels": 0,
                "checkpointing": 0,
            },
            fixed={
                "spectral_transform": ("sht", "sht"),
                "filter_type": ("linear", "linear"),
                "factorization": (None, "null (dense weights)"),
                "separable": (
                    False,
                    "false (the released ACE network fails when run with it)",
                ),
            },
            choices={
                "operator_type": OPERATOR_TYPES,
                "activation_function": tuple(ACTIVATIONS),
                "normalization_layer": NORMALIZATIONS,
                "data_grid": DATA_GRIDS,
                "internal_grid": INTERNAL_GRIDS,
            },
        )
        if not 0.0 < self.hard_thresholding_fraction <= 1.0:
            raise ValueError(
                "hard_thresholding_fraction must be in (0, 1], got "
                f"{self.hard_thresholding_fraction}"
            )
        if self.mlp_ratio <= 0.0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.internal_grid == "data" and self.scale_factor != 1:
            raise ValueError(
                "internal_grid: data needs scale_factor: 1, got "
                f"scale_factor={self.scale_factor}; use internal_grid: legendre-gauss"
            )
        if (
            self.normalization_layer == "layer_norm"
            and self.num_layers == 1
            and self.scale_factor != 1
        ):
            raise ValueError(
                "normalization_layer: layer_norm with num_layers: 1 needs "
                "scale_factor: 1 (the released ACE network fails otherwise)"
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
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            operator_type=self.operator_type,
            scale_factor=self.scale_factor,
            hard_thresholding_fraction=self.hard_thresholding_fraction,
            normalization_layer=self.normalization_layer,
            use_mlp=self.use_mlp,
            mlp_ratio=self.mlp_ratio,
            activation_function=self.activation_function,
            encoder_layers=self.encoder_layers,
            pos_embed=self.pos_embed,
            big_skip=self.big_skip,
            checkpointing=self.checkpointing,
            data_grid=self.data_grid,
            internal_grid=self.internal_grid,
            noise_channels=self.noise_channels,
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            img_shape=img_shape,
        )
