"""The registry of network modules and the YAML selector that builds one.

A network module maps ``[batch, n_in_channels, lat, lon]`` to
``[batch, n_out_channels, lat, lon]`` in normalised space. It knows nothing
about variable names, normalisation, correctors or parallelism.

YAML::

    builder:
      type: SphericalFourierNeuralOperatorNet
      config: {embed_dim: 16, num_layers: 2}
"""

from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from fme.core.number_check import check_number
from fme.core.registry import Registry


class ModuleConfig(Protocol):
    """What every registered module config provides."""

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the module for the given channel counts and (lat, lon) shape."""
        ...


MODULE_REGISTRY: Registry[ModuleConfig] = Registry("module")


def check_minimums(config: object, minimums: dict[str, int]) -> None:
    """Raise a ValueError naming the first field of ``config`` below its minimum."""
    for name, minimum in minimums.items():
        check_number(getattr(config, name), path=name, minimum=minimum, integer=True)


def check_builder_keys(
    config: object,
    *,
    builder: str,
    minimums: dict[str, int],
    fixed: dict[str, tuple[object, str]],
    choices: dict[str, tuple[object, ...]],
) -> None:
    """Check the keys of an ACE network builder config; raise a ValueError.

    Args:
        config: the config dataclass.
        builder: its name, for the message (e.g. "NoiseConditionedSFNO").
        minimums: integer keys and their smallest allowed value.
        fixed: keys ACE accepts with other values that are not implemented
            here: the one value supported and how to say it in the message.
            A value that differs is refused as "not supported here".
        choices: keys and their allowed values.
    """
    check_minimums(config, minimums)
    for name, (supported, described) in fixed.items():
        value = getattr(config, name)
        if value != supported:
            raise ValueError(
                f"{builder}: not supported here: {name}={value!r}; "
                f"supported: {described}"
            )
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(
                f"{builder}: {name} must be one of {list(allowed)}, got {value!r}"
            )


@dataclass
class ModuleSelector:
    """Chooses a registered network module by name and configures it.

    Both the type name and the config are validated on construction, so a bad
    YAML fails when the training config is loaded, not when training starts.

    Attributes:
        type: the registered name of the module, e.g.
            ``SphericalFourierNeuralOperatorNet``, ``ConvNet`` or ``Linear1x1``.
        config: keyword arguments of that module's config dataclass; unknown
            keys are an error naming the key.
    """

    type: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # get() raises a ValueError listing the registered names.
        MODULE_REGISTRY.get(self.type)
        self._module_config = MODULE_REGISTRY.from_dict(self.type, dict(self.config))

    @property
    def module_config(self) -> ModuleConfig:
        """The parsed config dataclass of the selected module."""
        return self._module_config

    @staticmethod
    def available_types() -> list[str]:
        """The registered module type names, sorted."""
        return MODULE_REGISTRY.names()

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the selected module.

        Args:
            n_in_channels: number of input channels of the network.
            n_out_channels: number of output channels of the network.
            img_shape: the (lat, lon) shape of the grid.

        Returns:
            A module mapping ``[batch, n_in_channels, lat, lon]`` to
            ``[batch, n_out_channels, lat, lon]``.
        """
        if n_in_channels < 1 or n_out_channels < 1:
            raise ValueError(
                "n_in_channels and n_out_channels must be >= 1, got "
                f"{n_in_channels} and {n_out_channels}"
            )
        if len(img_shape) != 2 or min(img_shape) < 1:
            raise ValueError(f"img_shape must be (n_lat, n_lon) >= 1, got {img_shape}")
        return self._module_config.build(
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            img_shape=(int(img_shape[0]), int(img_shape[1])),
        )
