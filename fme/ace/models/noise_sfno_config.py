"""The ``NoiseConditionedSFNO`` builder config (ACE2S): ACE's keys and values.

Every key of the released ACE builder is accepted, including the deprecated
ones ACE still reads (``operator_type`` must be dhconv, ``factorization`` null,
``separable`` false; ``spectral_transform``, ``rank``, ``complex_network``,
``complex_activation`` and ``spectral_layers`` are ignored, as in ACE). A
value ACE accepts but that is not implemented here is refused when the config
is loaded, naming the key and the supported values.
"""

from dataclasses import dataclass

from torch import nn

from fme.ace.models.noise_sfno import ConditionalSFNO, NoiseConditionedSFNO
from fme.ace.models.registry import MODULE_REGISTRY, check_builder_keys
from fme.ace.models.sfno import ACTIVATIONS, DATA_GRIDS
from fme.ace.models.sfno_builder_keys import SFNOBuilderKeys


@MODULE_REGISTRY.register("NoiseConditionedSFNO")
@dataclass
class NoiseConditionedSFNOConfig(SFNOBuilderKeys):
    """ACE's ``NoiseConditionedSFNO`` builder (same keys, defaults and meaning).

    The keys shared with ``SphericalFourierNeuralOperatorNet`` are
    documented on :class:`SFNOBuilderKeys`; for this builder ``filter_type``
    is "linear" (ACE's "makani-linear" is not supported here), and the keys
    ACE deprecated for it are read as ACE reads them: ``factorization`` must
    be null and ``separable`` false; ``spectral_transform``, ``rank``,
    ``complex_network``, ``complex_activation`` and ``spectral_layers`` are
    ignored.

    Attributes:
        noise_embed_dim: channels of the conditioning noise.
        context_pos_embed_dim: must be 0 (conditioning position embedding not
            supported here).
        label_embed_dim: must be 0 (labels not supported here).
        noise_type: "gaussian" or "isotropic".
        global_layer_norm: normalise over channels and grid points together.
        filter_residual: skip connections pass through an SHT round trip.
        filter_output: the output passes through an SHT round trip.
        local_blocks: must be null or empty (DISCO blocks not supported here).
        normalize_big_skip: the big skip passes through a conditional norm.
        affine_norms: learned element-wise affine parameters of the norms.
        filter_num_groups: must be 1.
        lora_rank: must be 0 (use this project's ``stepper_training.lora``).
        lora_alpha: accepted; unused without ``lora_rank``.
        spectral_lora_rank: must be 0.
        spectral_lora_alpha: accepted; unused without ``spectral_lora_rank``.
        filter_preserves_global_mean: the filters leave l = 0 unchanged.
        spectral_ratio: must be 1.
        clip_latent_global_means: must be false.
        operator_type: deprecated in ACE; must be "dhconv".
    """

    noise_embed_dim: int = 256
    context_pos_embed_dim: int = 0
    label_embed_dim: int = 0
    noise_type: str = "gaussian"
    global_layer_norm: bool = False
    filter_residual: bool = False
    filter_output: bool = False
    local_blocks: list[int] | None = None
    normalize_big_skip: bool = False
    affine_norms: bool = False
    filter_num_groups: int = 1
    lora_rank: int = 0
    lora_alpha: float | None = None
    spectral_lora_rank: int = 0
    spectral_lora_alpha: float | None = None
    filter_preserves_global_mean: bool = False
    spectral_ratio: float = 1.0
    clip_latent_global_means: bool = False
    operator_type: str = "dhconv"

    def __post_init__(self):
        if self.mlp_ratio <= 0.0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.local_blocks:
            raise ValueError(
                f"NoiseConditionedSFNO: not supported here: local_blocks="
                f"{self.local_blocks!r}; supported: null or []"
            )
        check_builder_keys(
            self,
            builder="NoiseConditionedSFNO",
            minimums={
                "embed_dim": 1,
                "noise_embed_dim": 1,
                "num_layers": 1,
                "encoder_layers": 0,
                "checkpointing": 0,
                "residual_filter_factor": 1,
            },
            fixed={
                name: (value, repr(value))
                for name, value in [
                    ("filter_type", "linear"),
                    ("context_pos_embed_dim", 0),
                    ("label_embed_dim", 0),
                    ("filter_num_groups", 1),
                    ("lora_rank", 0),
                    ("spectral_lora_rank", 0),
                    ("spectral_ratio", 1.0),
                    ("clip_latent_global_means", False),
                    ("operator_type", "dhconv"),
                    ("factorization", None),
                    ("separable", False),
                ]
            },
            choices={
                "noise_type": ("gaussian", "isotropic"),
                "activation_function": tuple(ACTIVATIONS),
                "data_grid": DATA_GRIDS,
            },
        )

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the network for the given channel counts and (lat, lon) shape."""
        model = ConditionalSFNO(
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            img_shape=img_shape,
            **self.network_arguments(),
            noise_channels=self.noise_embed_dim,
            global_layer_norm=self.global_layer_norm,
            affine_norms=self.affine_norms,
            filter_residual=self.filter_residual,
            filter_output=self.filter_output,
            normalize_big_skip=self.normalize_big_skip,
            filter_preserves_global_mean=self.filter_preserves_global_mean,
        )
        return NoiseConditionedSFNO(
            model, noise_channels=self.noise_embed_dim, noise_type=self.noise_type
        )
