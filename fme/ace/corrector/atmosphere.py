"""ACE's atmosphere corrector: a chain of physical constraints after the network.

The chain, in ACE's order (each step sees what the previous ones wrote):

1. ``force_positive_names``: clamp at zero (:class:`ForcePositive`).
   Variables also in ``conserve_global_mean_names`` (an fme addition) are
   clamped and rescaled to the input's global mean instead
   (:class:`RescaleToGlobalMean`); the other ``conserve_global_mean_names``
   are shifted to it (:class:`ShiftToGlobalMean`).
2. ``conserve_dry_air``: pin the global dry-air mass to the initial
   condition's (:class:`ConserveDryAir`; changes ``PRESsfc``).
3. ``zero_global_mean_moisture_advection`` (changes the advective tendency).
4. ``moisture_budget_correction`` (changes precipitation or the latent heat
   flux, and the advective tendency for the ``advection_*`` options), then
   ``clip_frozen_precipitation``.
5. ``total_energy_budget_correction`` (changes every ``air_temperature_<k>``).

Every later step leaves what the earlier ones constrained intact: dry air
depends on ``PRESsfc`` and water only, which steps 3-5 do not change; the
moisture budget reads water and ``PRESsfc`` (final after step 2) and step 5
changes only temperature; the energy budget runs last on the final fluxes.
So after the whole chain every constraint holds (the exceptions are ACE's:
a budget rescale of a clamped precipitation with a negative required mean).
"""

import dataclasses
import datetime
import logging
from collections.abc import Sequence

from fme.ace.corrector.atmosphere_names import (
    FROZEN_PRECIPITATION_COMPONENTS,
    MissingVariablesError,
    NameResolver,
    find_surface_name,
)
from fme.ace.corrector.corrector import CorrectorABC, CorrectorState
from fme.ace.corrector.energy import (
    EnergyBudgetConfig,
    EnergyBudgetNames,
    TotalEnergyBudgetCorrection,
)
from fme.ace.corrector.inverse import CorrectorInverse
from fme.ace.corrector.moisture import (
    ClipFrozenPrecipitation,
    MoistureBudgetCorrection,
    MoistureBudgetOption,
    ZeroGlobalMeanMoistureAdvection,
)
from fme.ace.corrector.operations import (
    ConserveDryAir,
    CorrectionContext,
    CorrectionOperation,
    ForcePositive,
    RescaleToGlobalMean,
    ShiftToGlobalMean,
    seeded_context,
)
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations
from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher
from fme.core.tensors import TensorDict, TensorMapping

__all__ = [
    "AtmosphereCorrector",
    "AtmosphereCorrectorConfig",
    "ConserveDryAir",
    "EnergyBudgetConfig",
    "ForcePositive",
    "RescaleToGlobalMean",
    "ShiftToGlobalMean",
]

logger = logging.getLogger(__name__)

_MOISTURE_OPTIONS = (
    "precipitation",
    "evaporation",
    "advection_and_precipitation",
    "advection_and_evaporation",
)


class AtmosphereCorrector(CorrectorABC, CorrectorInverse):
    """Applies a chain of :class:`CorrectionOperation` in order.

    Args:
        operations: the operations, applied first to last; built by
            :meth:`AtmosphereCorrectorConfig.build` in the order documented in
            this module.

    Attributes:
        changed_names: every variable some operation may change; exactly the
            keys of what :meth:`__call__` returns.
    """

    def __init__(self, operations: Sequence[CorrectionOperation]):
        self.operations = list(operations)
        self.changed_names: list[str] = []
        for operation in self.operations:
            for name in operation.changed_names:
                if name not in self.changed_names:
                    self.changed_names.append(name)

    @property
    def conserved_names(self) -> list[str]:
        """Variables whose area-weighted global mean the corrector conserves."""
        return [
            name
            for operation in self.operations
            if isinstance(operation, ShiftToGlobalMean | RescaleToGlobalMean)
            for name in operation.changed_names
        ]

    def initial_state(self, input_data: TensorMapping) -> CorrectorState:
        """The references a rollout from ``input_data`` is pinned to."""
        return seeded_context(self.operations, input_data).state

    def _context(
        self,
        input_data: TensorMapping,
        forcing_data: TensorMapping | None,
        state: CorrectorState | None,
    ) -> CorrectionContext:
        return seeded_context(self.operations, input_data, forcing_data, state)

    def _states(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> list[TensorDict]:
        """The full state before each operation, then after the last one."""
        states = [dict(gen_data)]
        for operation in self.operations:
            states.append({**states[-1], **operation(context, states[-1])})
        return states

    def __call__(
        self,
        input_data: TensorMapping,
        gen_data: TensorMapping,
        forcing_data: TensorMapping,
        state: CorrectorState | None = None,
    ) -> TensorDict:
        """Corrected values of ``changed_names``; see :class:`CorrectorABC`."""
        context = self._context(input_data, forcing_data, state)
        final = self._states(context, gen_data)[-1]
        return {name: final[name] for name in self.changed_names}

    def nearest_preimage(
        self,
        raw: TensorMapping,
        target: TensorMapping,
        input_data: TensorMapping,
        *,
        forcing_data: TensorMapping | None = None,
        state: CorrectorState | None = None,
    ) -> TensorDict:
        """A pre-image of ``C(target)`` near ``raw``; see :class:`CorrectorInverse`.

        The target is first corrected, so it satisfies every constraint; then
        the operations' inverses run last to first, each given the raw state
        that entered it in the forward pass of ``raw`` and the pre-image built
        so far as its target. Where operations change disjoint variables this
        is the nearest pre-image in the summed area-weighted L2 norm; where
        two change the same variable (a clamp, then a budget rescale) each
        stage is the nearest for its own stage.
        """
        context = self._context(input_data, forcing_data, state)
        raw_states = self._states(context, raw)
        preimage = self._states(context, target)[-1]
        for operation, raw_state in zip(
            reversed(self.operations), reversed(raw_states[:-1]), strict=True
        ):
            preimage.update(operation.nearest_preimage(raw_state, preimage, context))
        return {name: preimage[name] for name in self.changed_names}


@dataclasses.dataclass
class AtmosphereCorrectorConfig:
    """ACE's atmosphere corrector: physical constraints on each step's prediction.

    YAML, both of ACE's forms: ``corrector: {conserve_dry_air: true, ...}`` or
    ``corrector: {type: atmosphere_corrector, config: {...}}``. Names are
    matched like everywhere in fme (:class:`NameAndPrefixMatcher`): a bare
    ``specific_total_water`` selects every level. Operations run in the order
    given in :mod:`fme.ace.corrector.atmosphere`; every variable an option
    reads must be among the step's variables, which is checked when the step
    is built. ACE's spellings of each variable are accepted (``PRESsfc`` or
    ``PS``, ``PRATEsfc`` or ``PRECT`` ...; see
    :mod:`fme.ace.corrector.atmosphere_names`).

    Attributes:
        conserve_dry_air: pin the area-weighted global mean dry-air pressure
            ``mean(PRESsfc - g * TWP)`` of every prediction to its value in the
            rollout's initial condition (seeded at the first step and carried
            through the rollout, as in ACE) by a globally uniform change of each
            column's dry-air pressure, solved for ``PRESsfc``. Needs the
            hybrid vertical coordinate and ``PRESsfc``,
            ``specific_total_water_<k>`` (all levels) as prognostic variables.
        zero_global_mean_moisture_advection: subtract the global mean of the
            predicted ``tendency_of_total_water_path_due_to_advection``.
        moisture_budget_correction: close the moisture budget
            ``dTWP/dt = E - P + A`` (``E = LHTFLsfc / L_v``, ``P = PRATEsfc``,
            ``A`` the advective tendency): ``precipitation`` / ``evaporation``
            rescale ``P`` / ``E`` to close the global budget (assuming zero
            global-mean advection); ``advection_and_precipitation`` /
            ``advection_and_evaporation`` do the same, then recompute ``A`` as
            the column residual, closing the budget in every column. Null: off.
        clip_frozen_precipitation: after the moisture budget correction, clip
            ``total_frozen_precipitation_rate`` to at most ``PRATEsfc`` per
            cell. As in ACE it has no effect without
            ``moisture_budget_correction`` or when frozen precipitation is not
            predicted (a warning says so).
        total_energy_budget_correction: close the global ACE2 total-energy
            budget with one temperature change on every level (see
            :class:`EnergyBudgetConfig`). Needs every level's air temperature
            and water, ``PRESsfc``, the surface and top-of-atmosphere fluxes
            predicted, ``DSWRFtoa`` and ``HGTsfc`` as forcing.
        force_positive_names: variables clamped at zero (first in the chain).
        keep_gradient_through_clamps: the clamp of ``force_positive_names``
            passes gradients as if it had not clamped (straight-through).
        conserve_global_mean_names: (fme addition) variables whose
            area-weighted global mean is set to its value in the step's input
            state (so they must be prognostic). Additive uniform shift, or a
            multiplicative rescale for variables also in
            ``force_positive_names``. They may not be changed by a later
            operation.
        corrector_disabled_epochs: ACE's option to skip the corrector in the
            first training epochs; not supported here (must be 0).
    """

    conserve_dry_air: bool = False
    zero_global_mean_moisture_advection: bool = False
    moisture_budget_correction: MoistureBudgetOption | None = None
    force_positive_names: list[str] = dataclasses.field(default_factory=list)
    total_energy_budget_correction: EnergyBudgetConfig | None = None
    keep_gradient_through_clamps: bool = False
    clip_frozen_precipitation: bool = False
    conserve_global_mean_names: list[str] = dataclasses.field(default_factory=list)
    corrector_disabled_epochs: int = 0

    def __post_init__(self):
        for field_name in ("conserve_global_mean_names", "force_positive_names"):
            for entry in getattr(self, field_name):
                if entry.strip("_") == "":
                    raise ValueError(
                        f"{field_name} has the empty name {entry!r}; use variable "
                        "names, level prefixes (name_) or level names (name_3)"
                    )
        if (
            self.moisture_budget_correction is not None
            and self.moisture_budget_correction not in _MOISTURE_OPTIONS
        ):
            raise ValueError(
                "moisture_budget_correction must be one of "
                f"{list(_MOISTURE_OPTIONS)} or null, got "
                f"{self.moisture_budget_correction!r}"
            )
        energy = self.total_energy_budget_correction
        if energy is not None and energy.method != "constant_temperature":
            raise ValueError(
                "total_energy_budget_correction.method must be "
                f"'constant_temperature', got {energy.method!r}"
            )
        if self.corrector_disabled_epochs != 0:
            raise ValueError(
                "not supported here: corrector_disabled_epochs (ACE's option to "
                "skip the corrector in the first training epochs); remove it or "
                "set it to 0"
            )

    def _select(self, field_name: str, out_names: list[str]) -> list[str]:
        matcher = NameAndPrefixMatcher(getattr(self, field_name))
        unmatched = matcher.unmatched_entries(out_names)
        if unmatched:
            raise ValueError(
                f"corrector {field_name} entries {unmatched} match no predicted "
                f"variable; allowed (the step's out_names): {out_names}"
            )
        return matcher.select(out_names)

    def build(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: Sequence[str],
        in_names: Sequence[str] | None = None,
        next_step_names: Sequence[str] = (),
        timestep: datetime.timedelta | None = None,
    ) -> AtmosphereCorrector:
        """Check every needed variable is there and build the chain.

        Args:
            gridded_operations: the grid's area-weighted reductions.
            vertical_coordinate: the dataset's hybrid coordinate, if it has one.
            out_names: the variables the step predicts (``gen_data``).
            in_names: the variables of the step's input state (``input_data``);
                default: ``out_names``.
            next_step_names: the variables read from data at the next time
                (``forcing_data``).
            timestep: the step length, for the budgets.

        Raises:
            ValueError: a name matching no predicted variable, or an option
                without what it needs (naming the option and the missing names).
        """
        out_names = list(out_names)
        in_names = list(in_names) if in_names is not None else out_names
        builder = _ChainBuilder(
            gridded_operations=gridded_operations,
            vertical_coordinate=vertical_coordinate,
            out_names=out_names,
            in_names=in_names,
            next_step_names=list(next_step_names),
            timestep=timestep,
        )
        positive = self._select("force_positive_names", out_names)
        conserved = self._select("conserve_global_mean_names", out_names)
        positive_only = [name for name in positive if name not in conserved]
        if positive_only:
            builder.add(
                ForcePositive(
                    positive_only, keep_gradient=self.keep_gradient_through_clamps
                )
            )
        rescaled = [name for name in positive if name in conserved]
        if rescaled:
            builder.add(
                RescaleToGlobalMean(rescaled, gridded_operations=gridded_operations)
            )
        shifted = [name for name in conserved if name not in positive]
        if shifted:
            builder.add(
                ShiftToGlobalMean(shifted, gridded_operations=gridded_operations)
            )
        if self.conserve_dry_air:
            builder.add(builder.dry_air())
        if self.zero_global_mean_moisture_advection:
            builder.add(builder.zero_advection())
        if self.moisture_budget_correction is not None:
            builder.add(
                builder.moisture_budget(
                    self.moisture_budget_correction,
                    zero_mean_advection=self.zero_global_mean_moisture_advection,
                    clamped=positive,
                )
            )
        if self.clip_frozen_precipitation:
            clip = builder.clip_frozen(
                after_moisture_budget=self.moisture_budget_correction is not None
            )
            if clip is not None:
                builder.add(clip)
        if self.total_energy_budget_correction is not None:
            builder.add(builder.energy_budget(self.total_energy_budget_correction))
        builder.check_conserved_not_changed_later(conserved)
        return AtmosphereCorrector(builder.operations)


class _ChainBuilder:
    """Resolves the names each operation needs and builds it, or says what is missing."""

    def __init__(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: list[str],
        in_names: list[str],
        next_step_names: list[str],
        timestep: datetime.timedelta | None,
    ):
        self.ops = gridded_operations
        self.coordinate = vertical_coordinate
        self.out_names = out_names
        self.in_names = in_names
        self.next_step_names = next_step_names
        self.timestep = timestep
        self.operations: list[CorrectionOperation] = []

    def add(self, operation: CorrectionOperation) -> None:
        self.operations.append(operation)

    def _coordinate(self, key: str) -> HybridSigmaPressureCoordinate:
        if self.coordinate is None:
            raise ValueError(
                f"corrector {key} needs a hybrid vertical coordinate (ak_<i>/bk_<i> "
                "in the dataset), but the dataset has none; turn it off or use data "
                "with ak/bk"
            )
        return self.coordinate

    def _timestep_seconds(self, key: str) -> float:
        if self.timestep is None:
            raise ValueError(f"corrector {key} needs the dataset's timestep")
        return self.timestep.total_seconds()

    def _predicted(self, key: str) -> NameResolver:
        n_levels = self.coordinate.n_levels if self.coordinate is not None else 0
        return NameResolver(
            where="the step's out_names", available=self.out_names, n_levels=n_levels
        )

    def _prognostic_column(self, key: str) -> tuple[str, list[str]]:
        """``PRESsfc`` and the water levels, predicted and in the input state."""
        coordinate = self._coordinate(key)
        prognostic = [n for n in self.out_names if n in self.in_names]
        resolver = NameResolver(
            where="the step's prognostic names (in both in_names and out_names)",
            available=prognostic,
            n_levels=coordinate.n_levels,
        )
        surface_pressure = resolver.surface("surface_pressure")
        water = resolver.layers("specific_total_water")
        resolver.check(key)
        return surface_pressure, water

    def dry_air(self) -> ConserveDryAir:
        key = "conserve_dry_air=true"
        surface_pressure, water = self._prognostic_column(key)
        return ConserveDryAir(
            gridded_operations=self.ops,
            vertical_coordinate=self._coordinate(key),
            surface_pressure_name=surface_pressure,
            water_names=water,
        )

    def zero_advection(self) -> ZeroGlobalMeanMoistureAdvection:
        key = "zero_global_mean_moisture_advection=true"
        resolver = self._predicted(key)
        name = resolver.surface("tendency_of_total_water_path_due_to_advection")
        resolver.check(key)
        return ZeroGlobalMeanMoistureAdvection(name, gridded_operations=self.ops)

    def moisture_budget(
        self,
        option: MoistureBudgetOption,
        *,
        zero_mean_advection: bool,
        clamped: list[str],
    ) -> MoistureBudgetCorrection:
        key = f"moisture_budget_correction={option}"
        surface_pressure, water = self._prognostic_column(key)
        resolver = self._predicted(key)
        precipitation = resolver.surface("precipitation_rate")
        latent_heat_flux = resolver.surface("latent_heat_flux")
        advection: str | None = None
        if option.startswith("advection"):
            advection = resolver.surface(
                "tendency_of_total_water_path_due_to_advection"
            )
        resolver.check(key)
        predicted_advection = find_surface_name(
            "tendency_of_total_water_path_due_to_advection", self.out_names
        )
        if (
            not option.startswith("advection")
            and predicted_advection is not None
            and not zero_mean_advection
        ):
            logger.warning(
                "corrector moisture_budget_correction=%s closes the global budget "
                "assuming zero global-mean advection, but the predicted %s is not "
                "made zero-mean; set zero_global_mean_moisture_advection: true",
                option,
                predicted_advection,
            )
        return MoistureBudgetCorrection(
            option,
            gridded_operations=self.ops,
            vertical_coordinate=self._coordinate(key),
            timestep_seconds=self._timestep_seconds(key),
            surface_pressure_name=surface_pressure,
            water_names=water,
            precipitation_name=precipitation,
            latent_heat_flux_name=latent_heat_flux,
            advection_name=advection,
            scaled_is_non_negative=(
                precipitation if option.endswith("precipitation") else latent_heat_flux
            )
            in clamped,
        )

    def clip_frozen(
        self, *, after_moisture_budget: bool
    ) -> ClipFrozenPrecipitation | None:
        frozen = find_surface_name("frozen_precipitation_rate", self.out_names)
        if not after_moisture_budget or frozen is None:
            logger.warning(
                "corrector clip_frozen_precipitation=true has no effect (as in ACE): "
                "it needs moisture_budget_correction and a predicted "
                "total_frozen_precipitation_rate"
            )
            return None
        precipitation = find_surface_name("precipitation_rate", self.out_names)
        assert precipitation is not None  # checked by moisture_budget
        return ClipFrozenPrecipitation(
            frozen_name=frozen, precipitation_name=precipitation
        )

    def energy_budget(self, config: EnergyBudgetConfig) -> TotalEnergyBudgetCorrection:
        key = "total_energy_budget_correction"
        coordinate = self._coordinate(key)
        surface_pressure, water = self._prognostic_column(key)
        prognostic = [n for n in self.out_names if n in self.in_names]
        temperature_resolver = NameResolver(
            where="the step's prognostic names (in both in_names and out_names)",
            available=prognostic,
            n_levels=coordinate.n_levels,
        )
        temperature = temperature_resolver.layers("air_temperature")
        temperature_resolver.check(key)
        resolver = self._predicted(key)
        fluxes = {
            field: resolver.surface(quantity)
            for field, quantity in [
                ("toa_up_sw", "toa_up_sw_radiative_flux"),
                ("toa_up_lw", "toa_up_lw_radiative_flux"),
                ("sfc_down_sw", "sfc_down_sw_radiative_flux"),
                ("sfc_up_sw", "sfc_up_sw_radiative_flux"),
                ("sfc_down_lw", "sfc_down_lw_radiative_flux"),
                ("sfc_up_lw", "sfc_up_lw_radiative_flux"),
                ("latent_heat_flux", "latent_heat_flux"),
                ("sensible_heat_flux", "sensible_heat_flux"),
            ]
        }
        resolver.check(key)
        frozen_name = find_surface_name("frozen_precipitation_rate", self.out_names)
        if frozen_name is not None:
            frozen = [frozen_name]
        elif all(n in self.out_names for n in FROZEN_PRECIPITATION_COMPONENTS):
            frozen = list(FROZEN_PRECIPITATION_COMPONENTS)
        else:
            frozen = []
        # Forcing read at both times: the input state's and the next time's data.
        both = [n for n in self.next_step_names if n in self.in_names]
        forcing = NameResolver(
            where=(
                "the step's forcing (in_names not in out_names, read at the next time)"
            ),
            available=self.next_step_names,
            n_levels=coordinate.n_levels,
        )
        toa_down_sw = forcing.surface("toa_down_sw_radiative_flux")
        forcing.check(key)
        surface_height = find_surface_name("surface_height", both)
        geopotential = find_surface_name("surface_geopotential", both)
        if surface_height is None and geopotential is None:
            raise MissingVariablesError(
                f"corrector {key} needs ['HGTsfc'] (surface height, or PHIS) as a "
                "forcing variable (in in_names, not in out_names), which is read "
                f"at the input and the next time; forcing names: {sorted(both)}; "
                f"add HGTsfc to in_names or remove {key}"
            )
        names = EnergyBudgetNames(
            air_temperature=temperature,
            water=water,
            surface_pressure=surface_pressure,
            frozen_precipitation=frozen,
            toa_down_sw=toa_down_sw,
            surface_height=surface_height,
            surface_geopotential=geopotential if surface_height is None else None,
            **fluxes,
        )
        return TotalEnergyBudgetCorrection(
            names,
            gridded_operations=self.ops,
            vertical_coordinate=coordinate,
            timestep_seconds=self._timestep_seconds(key),
            unaccounted_heating=config.constant_unaccounted_heating,
        )

    def check_conserved_not_changed_later(self, conserved: list[str]) -> None:
        """A conserved mean would be broken again by a later operation."""
        later = [
            name
            for operation in self.operations
            if not isinstance(operation, ShiftToGlobalMean | RescaleToGlobalMean)
            and not isinstance(operation, ForcePositive)
            for name in operation.changed_names
        ]
        clash = sorted(set(conserved) & set(later))
        if clash:
            raise ValueError(
                f"corrector conserve_global_mean_names {clash} are changed again by "
                "a later correction (dry air, moisture or energy budget), which "
                "would break their global mean; remove them from "
                "conserve_global_mean_names"
            )
