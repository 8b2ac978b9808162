"""ACE's ``total_energy_budget_correction``: closes the global energy budget.

With the ACE2 total energy path ``E`` (J m-2) and the net energy flux into the
atmosphere ``F`` (W m-2), both from :mod:`fme.ace.physics`, the global means
``<.>`` must satisfy

    <E(gen)> = <E(input)> + (<F(gen)> + Q) * dt

with ``Q`` the ``constant_unaccounted_heating`` (W m-2). The ``constant_temperature``
method adds one temperature change to every level and column; the energy path
is affine in temperature, so the change is exact:
``c = (<E(input)> + (<F> + Q) dt - <E(gen)>) / <dE/dc>``.
"""

import dataclasses
from typing import Literal

import torch

from fme.ace import physics
from fme.ace.corrector.operations import (
    CorrectionContext,
    CorrectionOperation,
    stack_levels,
)
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class EnergyBudgetConfig:
    """ACE's ``total_energy_budget_correction``.

    Attributes:
        method: how the budget is closed; ``constant_temperature`` (the only
            method, as in ACE): one temperature change for every level and
            column.
        constant_unaccounted_heating: column heating (W m-2) added to the
            energy flux into the atmosphere, e.g. to absorb a known imbalance
            of the training data; the same at every step and cell.
    """

    method: Literal["constant_temperature"]
    constant_unaccounted_heating: float = 0.0


@dataclasses.dataclass
class EnergyBudgetNames:
    """Where each quantity of the energy budget is read.

    From the prediction: ``air_temperature``, ``water`` (per level),
    ``surface_pressure`` and the fluxes; ``frozen_precipitation`` is a list of
    names summed (empty: no frozen precipitation). From the next time's data
    (``forcing_data``): ``toa_down_sw`` and the surface height; from the input
    state: the surface height again. The surface height is ``surface_height``
    (m), or ``surface_geopotential`` (m2 s-2) divided by E3SM's gravity when
    only that is present.
    """

    air_temperature: list[str]
    water: list[str]
    surface_pressure: str
    toa_up_sw: str
    toa_up_lw: str
    sfc_down_sw: str
    sfc_up_sw: str
    sfc_down_lw: str
    sfc_up_lw: str
    latent_heat_flux: str
    sensible_heat_flux: str
    frozen_precipitation: list[str]
    toa_down_sw: str
    surface_height: str | None
    surface_geopotential: str | None


class TotalEnergyBudgetCorrection(CorrectionOperation):
    """Closes the global total-energy budget with a uniform temperature change.

    Args:
        names: where each quantity is read.
        gridded_operations: the grid's area-weighted reductions.
        vertical_coordinate: the hybrid sigma-pressure coordinate.
        timestep_seconds: the step length ``dt`` (s).
        unaccounted_heating: ``Q`` (W m-2).
    """

    def __init__(
        self,
        names: EnergyBudgetNames,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate,
        timestep_seconds: float,
        unaccounted_heating: float,
    ):
        self.names = names
        self.changed_names = list(names.air_temperature)
        self._ops = gridded_operations
        self._coordinate = vertical_coordinate
        self._dt = timestep_seconds
        self._heating = unaccounted_heating

    def _surface_height(self, data: TensorMapping) -> torch.Tensor:
        if self.names.surface_height is not None:
            return data[self.names.surface_height]
        assert self.names.surface_geopotential is not None
        return data[self.names.surface_geopotential] / physics.GRAVITY_E3SM_M_PER_S2

    def energy_path(
        self, data: TensorMapping, surface_height: torch.Tensor
    ) -> torch.Tensor:
        """ACE2 total energy path of ``data`` (J m-2)."""
        return physics.total_energy_path(
            stack_levels(data, self.names.air_temperature),
            stack_levels(data, self.names.water),
            coordinate=self._coordinate,
            surface_pressure=data[self.names.surface_pressure],
            surface_height=surface_height,
        )

    def energy_flux(
        self, gen_data: TensorMapping, forcing_data: TensorMapping
    ) -> torch.Tensor:
        """Net energy flux into the atmosphere of the prediction (W m-2)."""
        n = self.names
        frozen: torch.Tensor | float = 0.0
        for name in n.frozen_precipitation:
            frozen = frozen + gen_data[name]
        return physics.net_energy_flux_into_atmosphere(
            toa_down_sw=forcing_data[n.toa_down_sw],
            toa_up_sw=gen_data[n.toa_up_sw],
            toa_up_lw=gen_data[n.toa_up_lw],
            sfc_down_sw=gen_data[n.sfc_down_sw],
            sfc_up_sw=gen_data[n.sfc_up_sw],
            sfc_down_lw=gen_data[n.sfc_down_lw],
            sfc_up_lw=gen_data[n.sfc_up_lw],
            latent_heat_flux=gen_data[n.latent_heat_flux],
            sensible_heat_flux=gen_data[n.sensible_heat_flux],
            frozen_precipitation_rate=frozen,
        )

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """Every level's air temperature plus the one correcting change."""
        mean = self._ops.area_weighted_mean
        input_energy = self.energy_path(
            context.input_data, self._surface_height(context.input_data)
        )
        gen_energy = self.energy_path(
            gen_data, self._surface_height(context.forcing_data)
        )
        flux = self.energy_flux(gen_data, context.forcing_data)
        desired = (
            mean(input_energy, keepdim=True)
            + (mean(flux, keepdim=True) + self._heating) * self._dt
        )
        per_kelvin = physics.energy_path_per_uniform_warming(
            stack_levels(gen_data, self.names.water),
            coordinate=self._coordinate,
            surface_pressure=gen_data[self.names.surface_pressure],
        )
        change = (desired - mean(gen_energy, keepdim=True)) / mean(
            per_kelvin, keepdim=True
        )
        return {name: gen_data[name] + change for name in self.changed_names}

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """``target + c`` on every level, ``c`` the mean over levels and area of ``raw - target``.

        The correction adds one constant to every level and the energy path is
        affine in temperature, so every ``target + c`` maps to ``target``.
        """
        names = self.changed_names
        offset = torch.stack(
            [
                self._ops.area_weighted_mean(raw[n] - target[n], keepdim=True)
                for n in names
            ]
        ).mean(dim=0)
        return {n: target[n] + offset for n in names}
