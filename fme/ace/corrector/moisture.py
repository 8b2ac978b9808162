"""ACE's moisture corrections: zero-mean advection, budget closure, frozen clip.

The column moisture budget (:mod:`fme.ace.physics` for the integrals) is

    (TWP(gen) - TWP(input)) / dt = E - P + A

with total water path ``TWP`` (kg m-2), evaporation ``E = LHTFLsfc / L_v``,
precipitation ``P = PRATEsfc`` and the advective tendency
``A = tendency_of_total_water_path_due_to_advection`` (all kg m-2 s-1).
Advection only moves water, so its global mean is zero.
"""

from typing import Literal

import torch

from fme.ace import physics
from fme.ace.corrector.inverse import (
    nearest_ceiling_preimage,
    nearest_scale_preimage,
    nearest_shift_preimage,
)
from fme.ace.corrector.operations import (
    CorrectionContext,
    CorrectionOperation,
    stack_levels,
)
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorDict, TensorMapping

MoistureBudgetOption = Literal[
    "precipitation",
    "evaporation",
    "advection_and_precipitation",
    "advection_and_evaporation",
]


class ZeroGlobalMeanMoistureAdvection(CorrectionOperation):
    """Subtracts the global mean of the advective tendency: ``A - mean(A)``.

    Args:
        advection_name: the advective tendency variable.
        gridded_operations: the grid's area-weighted reductions.
    """

    def __init__(self, advection_name: str, *, gridded_operations: LatLonOperations):
        self.changed_names = [advection_name]
        self._name = advection_name
        self._ops = gridded_operations

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The advective tendency with zero global mean."""
        advection = gen_data[self._name]
        mean = self._ops.area_weighted_mean(advection, keepdim=True)
        return {self._name: advection - mean}

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """``target + c`` nearest to ``raw``."""
        return {
            self._name: nearest_shift_preimage(
                raw[self._name], target[self._name], gridded_operations=self._ops
            )
        }


class MoistureBudgetCorrection(CorrectionOperation):
    """ACE's ``moisture_budget_correction``: closes the moisture budget.

    With the global means ``<.>`` and ``tendency = (TWP(gen) - TWP(input)) / dt``:

    - ``precipitation``: ``P <- P * (<E> - <tendency>) / <P>``, which closes the
      global budget ``<tendency> = <E> - <P>`` (global-mean advection assumed
      zero);
    - ``evaporation``: ``E <- E * (<tendency> + <P>) / <E>`` (``LHTFLsfc``
      changes accordingly), closing the same global budget;
    - ``advection_and_precipitation`` / ``advection_and_evaporation``: the
      global fix above, then ``A <- tendency - (E - P)``, which closes the
      budget in every column (and gives ``<A> = 0``).

    Args:
        option: one of the four above.
        gridded_operations: the grid's area-weighted reductions.
        vertical_coordinate: the hybrid sigma-pressure coordinate.
        timestep_seconds: the step length ``dt`` (s).
        surface_pressure_name: ``PRESsfc`` (or its alias).
        water_names: ``specific_total_water_<k>`` for every level.
        precipitation_name: ``PRATEsfc`` (or its alias).
        latent_heat_flux_name: ``LHTFLsfc`` (or its alias).
        advection_name: the advective tendency; needed by the advection options.
        scaled_is_non_negative: the rescaled field was clamped at zero before
            (restricts the pre-images to one sign).
    """

    def __init__(
        self,
        option: MoistureBudgetOption,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate,
        timestep_seconds: float,
        surface_pressure_name: str,
        water_names: list[str],
        precipitation_name: str,
        latent_heat_flux_name: str,
        advection_name: str | None,
        scaled_is_non_negative: bool = False,
    ):
        self.option = option
        self._scaled_is_non_negative = scaled_is_non_negative
        self._ops = gridded_operations
        self._coordinate = vertical_coordinate
        self._dt = timestep_seconds
        self._ps = surface_pressure_name
        self._water = list(water_names)
        self._precipitation = precipitation_name
        self._lhf = latent_heat_flux_name
        self._advection = advection_name
        self._scaled = (
            precipitation_name
            if option.endswith("precipitation")
            else latent_heat_flux_name
        )
        self.changed_names = [self._scaled]
        if option.startswith("advection"):
            assert advection_name is not None
            self.changed_names.append(advection_name)

    def _water_path(self, data: TensorMapping) -> torch.Tensor:
        return physics.total_water_path(
            stack_levels(data, self._water),
            coordinate=self._coordinate,
            surface_pressure=data[self._ps],
        )

    def water_path_tendency(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> torch.Tensor:
        """``(TWP(gen) - TWP(input)) / dt`` (kg m-2 s-1)."""
        return (self._water_path(gen_data) - self._water_path(input_data)) / self._dt

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The rescaled precipitation or latent heat flux, and advection if recomputed."""
        mean = self._ops.area_weighted_mean
        tendency = self.water_path_tendency(context.input_data, gen_data)
        precipitation = gen_data[self._precipitation]
        evaporation = physics.evaporation_rate(gen_data[self._lhf])
        out: TensorDict = {}
        if self.option.endswith("precipitation"):
            needed = mean(evaporation, keepdim=True) - mean(tendency, keepdim=True)
            precipitation = precipitation * (needed / mean(precipitation, keepdim=True))
            out[self._precipitation] = precipitation
        else:
            needed = mean(tendency, keepdim=True) + mean(precipitation, keepdim=True)
            evaporation = evaporation * (needed / mean(evaporation, keepdim=True))
            out[self._lhf] = physics.latent_heat_flux(evaporation)
        if self._advection is not None and self.option.startswith("advection"):
            out[self._advection] = tendency - (evaporation - precipitation)
        return out

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """The rescaled field's ray ``s * target``; the advection's raw value.

        Recomputed advection does not depend on the advection that came in, so
        every value is a pre-image and the nearest is the raw one.
        """
        out = {
            self._scaled: nearest_scale_preimage(
                raw[self._scaled],
                target[self._scaled],
                gridded_operations=self._ops,
                non_negative_input=self._scaled_is_non_negative,
            )
        }
        if self._advection is not None and self.option.startswith("advection"):
            out[self._advection] = raw[self._advection]
        return out


class ClipFrozenPrecipitation(CorrectionOperation):
    """ACE's ``clip_frozen_precipitation``: frozen at most total precipitation.

    ``total_frozen_precipitation_rate <- minimum(frozen, PRATEsfc)`` per cell,
    after the moisture budget correction (so the ceiling is the corrected
    precipitation).

    Args:
        frozen_name: the frozen precipitation rate.
        precipitation_name: the total precipitation rate.
    """

    def __init__(self, *, frozen_name: str, precipitation_name: str):
        self.changed_names = [frozen_name]
        self._frozen = frozen_name
        self._precipitation = precipitation_name

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The clipped frozen precipitation rate."""
        return {
            self._frozen: torch.minimum(
                gen_data[self._frozen], gen_data[self._precipitation]
            )
        }

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """See :func:`fme.ace.corrector.inverse.nearest_ceiling_preimage`."""
        return {
            self._frozen: nearest_ceiling_preimage(
                raw[self._frozen], target[self._frozen], target[self._precipitation]
            )
        }
