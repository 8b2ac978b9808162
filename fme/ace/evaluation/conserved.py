"""What a rollout's drift report covers: the quantities the corrector conserves.

- every variable whose global mean the corrector conserves
  (``conserve_global_mean_names``) is tracked as itself;
- a corrector that conserves dry air (``conserve_dry_air``) adds the column
  dry-air mass ``(PRESsfc - g * TWP) / g`` and the total water path
  ``TWP = sum_k q_k * dp_k / g`` (both kg/m^2), with ``q_k`` the
  ``specific_total_water_<k>`` and ``dp_k`` the layer thicknesses of the
  data's hybrid vertical coordinate. Dry air is conserved; water is not (it
  rains and evaporates), but its drift is what an atmosphere user checks.
"""

import dataclasses
from collections.abc import Mapping

import torch

from fme.ace import physics
from fme.ace.corrector.atmosphere import ConserveDryAir
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.ace.evaluation.metrics import DerivedQuantity
from fme.ace.stepper.stepper import Stepper

DRY_AIR_MASS = "dry_air_mass"
TOTAL_WATER_PATH = "total_water_path"


@dataclasses.dataclass
class ConservedQuantities:
    """Variables and derived fields whose global-mean drift a rollout reports.

    Attributes:
        names: variables whose global mean the corrector conserves.
        derived: ``{name: function of the state}`` derived fields.
        units: units of the derived fields.
    """

    names: list[str]
    derived: dict[str, DerivedQuantity]
    units: dict[str, str]

    @property
    def all_names(self) -> list[str]:
        """Variables, then derived fields."""
        return self.names + list(self.derived)


class _ColumnWater:
    """Total water path and dry-air mass of each column (kg/m^2)."""

    def __init__(
        self, coordinate: HybridSigmaPressureCoordinate, operation: ConserveDryAir
    ):
        self._coordinate = coordinate
        self._water_names = operation.water_names
        self._surface_pressure_name = operation.surface_pressure_name

    def water_path(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        water = torch.stack([data[n].double() for n in self._water_names], dim=-1)
        return physics.total_water_path(
            water,
            coordinate=self._coordinate,
            surface_pressure=data[self._surface_pressure_name].double(),
        )

    def dry_air_mass(self, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        surface_pressure = data[self._surface_pressure_name].double()
        gravity = physics.GRAVITY_M_PER_S2
        return (surface_pressure - gravity * self.water_path(data)) / gravity


def conserved_quantities(stepper: Stepper) -> ConservedQuantities:
    """The quantities the stepper's corrector conserves (empty without one)."""
    corrector = stepper.corrector
    names = list(getattr(corrector, "conserved_names", []))
    operations = getattr(corrector, "operations", [])
    derived: dict[str, DerivedQuantity] = {}
    units: dict[str, str] = {}
    coordinate = stepper.dataset_info.vertical_coordinate
    dry_air = [op for op in operations if isinstance(op, ConserveDryAir)]
    if coordinate is not None and dry_air:
        column = _ColumnWater(coordinate, dry_air[0])
        derived[DRY_AIR_MASS] = column.dry_air_mass
        derived[TOTAL_WATER_PATH] = column.water_path
        units = {DRY_AIR_MASS: "kg/m**2", TOTAL_WATER_PATH: "kg/m**2"}
    return ConservedQuantities(names=names, derived=derived, units=units)
