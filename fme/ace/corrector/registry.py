"""Choosing a corrector from YAML, in both of ACE's forms.

``corrector: {type: atmosphere_corrector, config: {...}}`` selects a
registered corrector type; a mapping without ``type`` (``corrector:
{conserve_dry_air: true, ...}``) is the atmosphere corrector's config itself,
as ACE reads it.
"""

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any, Protocol

from fme.ace.corrector.atmosphere import AtmosphereCorrectorConfig
from fme.ace.corrector.corrector import CorrectorABC
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.config_loading import ConfigError
from fme.core.gridded_ops import LatLonOperations
from fme.core.registry import Registry


class CorrectorConfig(Protocol):
    """What a registered corrector config provides."""

    def build(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: Sequence[str],
        in_names: Sequence[str] | None = None,
        next_step_names: Sequence[str] = (),
        timestep: datetime.timedelta | None = None,
    ) -> CorrectorABC:
        """Build the corrector for a grid, vertical coordinate and variables."""
        ...


CORRECTOR_REGISTRY: Registry[CorrectorConfig] = Registry("corrector")
CORRECTOR_REGISTRY.register("atmosphere_corrector")(AtmosphereCorrectorConfig)


@dataclasses.dataclass
class CorrectorSelector:
    """A corrector chosen by its registered type name.

    Attributes:
        type: the corrector type; ``atmosphere_corrector`` (see
            :class:`fme.ace.corrector.atmosphere.AtmosphereCorrectorConfig`).
        config: that type's config, checked strictly (unknown keys are errors).
    """

    type: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # get() raises a ValueError listing the registered types.
        CORRECTOR_REGISTRY.get(self.type)
        self._config = CORRECTOR_REGISTRY.from_dict(self.type, self.config)

    @property
    def corrector_config(self) -> CorrectorConfig:
        """The selected type's config."""
        return self._config

    def build(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: Sequence[str],
        in_names: Sequence[str] | None = None,
        next_step_names: Sequence[str] = (),
        timestep: datetime.timedelta | None = None,
    ) -> CorrectorABC:
        """Build the selected corrector; see its config's ``build``."""
        return self._config.build(
            gridded_operations=gridded_operations,
            vertical_coordinate=vertical_coordinate,
            out_names=out_names,
            in_names=in_names,
            next_step_names=next_step_names,
            timestep=timestep,
        )


def corrector_selector_from_yaml(data: Any, *, path: str) -> CorrectorSelector:
    """Either of ACE's corrector forms as a :class:`CorrectorSelector`.

    Args:
        data: ``{type: ..., config: {...}}`` or a flat atmosphere corrector
            config ``{conserve_dry_air: true, ...}``.
        path: where ``data`` sits in the config, for error messages.

    Raises:
        ConfigError: not a mapping, or an invalid config (naming ``path``).
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping ({{type: atmosphere_corrector, config: "
            f"{{...}}}} or {{conserve_dry_air: true, ...}}), got {data!r}"
        )
    try:
        if "type" in data:
            unknown = sorted(set(data) - {"type", "config"})
            if unknown:
                raise ConfigError(
                    f"unknown key(s) {unknown} next to 'type'; allowed: type, config"
                )
            return CorrectorSelector(
                type=data["type"], config=dict(data.get("config") or {})
            )
        return CorrectorSelector(type="atmosphere_corrector", config=dict(data))
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
