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
from fme.ace.models.sfno_builder_keys import SFNOBuilderKeys


@MODULE_REGISTRY.register("SphericalFourierNeuralOperatorNet")
@dataclass
class SphericalFourierNeuralOperatorConfig(SFNOBuilderKeys):
    """ACE's ``SphericalFourierNeuralOperatorNet`` builder (same keys, defaults, meaning).

    The built network has ACE's ``state_dict`` names and shapes, so weights
    move between the two both ways. The keys shared with ``NoiseConditionedSFNO``
    are documented on :class:`SFNOBuilderKeys`; for this builder:
    ``filter_type`` is "linear" (ACE's "non-linear" spectral attention is not
    supported here); ``separable`` must be false because ACE's separable
    contraction fails when run; ``factorization`` must be null because ACE's
    tensorly factorizations are not supported here; ``mlp_ratio`` is ours
    (ACE's builder fixes it at 2).

    Attributes:
        operator_type: "diagonal" (one complex matrix per (l, m), ACE's
            default) or "dhconv" (one per degree l, shared across orders m).
        scale_factor: the blocks between the first and the last work on a
            Legendre-Gauss grid of ``img_shape // scale_factor``.
        hard_thresholding_fraction: fraction in (0, 1] of the degrees and
            orders kept.
        normalization_layer: "instance_norm", "layer_norm" (over the grid
            points of each channel, one affine weight per grid point) or
            "none".
        noise_channels: (ours) standard-normal noise channels appended to the
            input on every call, making the network stochastic.
        internal_grid: (ours) "legendre-gauss" puts the blocks between the
            first and the last on a Legendre-Gauss grid, as ACE does; "data"
            keeps them on the data grid (only with ``scale_factor: 1``),
            which saves two transforms per block for equiangular data and is
            the layout of this project's checkpoints before format 2.
    """

    operator_type: str = "diagonal"
    scale_factor: int = 1
    hard_thresholding_fraction: float = 1.0
    normalization_layer: str = "instance_norm"
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
            **self.network_arguments(),
            operator_type=self.operator_type,
            scale_factor=self.scale_factor,
            hard_thresholding_fraction=self.hard_thresholding_fraction,
            normalization_layer=self.normalization_layer,
            internal_grid=self.internal_grid,
            noise_channels=self.noise_channels,
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            img_shape=img_shape,
        )
