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


@MODULE_REGISTRY.register("NoiseConditionedSFNO")
@dataclass
class NoiseConditionedSFNOConfig:
    """ACE's ``NoiseConditionedSFNO`` builder (same keys, defaults and meaning).

    Attributes:
        filter_type: "linear" (ACE's "makani-linear" is not supported here).
        residual_filter_factor: accepted; no effect (as in ACE's builder).
        embed_dim: feature channels.
        noise_embed_dim: channels of the conditioning noise.
        context_pos_embed_dim: must be 0 (conditioning position embedding not
            supported here).
        label_embed_dim: must be 0 (labels not supported here).
        noise_type: "gaussian" or "isotropic".
        global_layer_norm: normalise over channels and grid points together.
        num_layers: number of blocks.
        use_mlp: blocks end with a pointwise MLP.
        mlp_ratio: MLP hidden width relative to ``embed_dim``.
        activation_function: "gelu", "relu" or "silu".
        encoder_layers: hidden layers of the encoder and of the decoder.
        pos_embed: learned position embedding after the encoder.
        big_skip: the decoder also sees the input.
        checkpointing: activation checkpointing level as in ACE.
        data_grid: "legendre-gauss" (ACE's default) or "equiangular".
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
        factorization: deprecated in ACE; must be null.
        separable: deprecated in ACE; must be false.
        spectral_transform: deprecated in ACE; ignored.
        rank: deprecated in ACE; ignored.
        complex_network: deprecated in ACE; ignored.
        complex_activation: deprecated in ACE; ignored.
        spectral_layers: deprecated in ACE; ignored.
    """

    filter_type: str = "linear"
    residual_filter_factor: int = 1
    embed_dim: int = 256
    noise_embed_dim: int = 256
    context_pos_embed_dim: int = 0
    label_embed_dim: int = 0
    noise_type: str = "gaussian"
    global_layer_norm: bool = False
    num_layers: int = 12
    use_mlp: bool = True
    mlp_ratio: float = 2.0
    activation_function: str = "gelu"
    encoder_layers: int = 1
    pos_embed: bool = True
    big_skip: bool = True
    checkpointing: int = 0
    data_grid: str = "legendre-gauss"
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
    factorization: str | None = None
    separable: bool = False
    spectral_transform: str = "sht"
    rank: float = 1.0
    complex_network: bool = True
    complex_activation: str = "real"
    spectral_layers: int = 1

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
            embed_dim=self.embed_dim,
            noise_channels=self.noise_embed_dim,
            num_layers=self.num_layers,
            use_mlp=self.use_mlp,
            mlp_ratio=self.mlp_ratio,
            activation_function=self.activation_function,
            encoder_layers=self.encoder_layers,
            pos_embed=self.pos_embed,
            big_skip=self.big_skip,
            checkpointing=self.checkpointing,
            data_grid=self.data_grid,
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
