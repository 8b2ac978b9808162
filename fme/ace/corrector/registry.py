"""Choosing a corrector from YAML: ``{type: <name>, config: {...}}``."""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

from fme.ace.corrector.atmosphere import AtmosphereCorrectorConfig
from fme.ace.corrector.corrector import CorrectorABC
from fme.ace.data.batch import HybridSigmaPressureCoordinate
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
    ) -> CorrectorABC:
        """Build the corrector for a grid, vertical coordinate and outputs."""
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

    def build(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: Sequence[str],
    ) -> CorrectorABC:
        """Build the selected corrector; see its config's ``build``."""
        return self._config.build(
            gridded_operations=gridded_operations,
            vertical_coordinate=vertical_coordinate,
            out_names=out_names,
        )
