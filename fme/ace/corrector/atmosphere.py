"""The atmosphere corrector: positivity, global-mean and dry-air-mass constraints.

The corrector is a fixed chain of small operations. Each operation changes a
set of variables that no other operation changes, and returns only those:

1. :class:`ForcePositive` clamps at zero the ``force_positive_names`` that are
   not also mean-conserved.
2. :class:`RescaleToGlobalMean` handles variables that are both forced
   positive and mean-conserved: clamp at zero, then multiply by
   ``mean(input) / mean(clamped)``. A multiplicative fix keeps the values
   non-negative, where an additive shift after the clamp could make them
   negative again (as in ACE, which also conserves positive quantities by
   rescaling).
3. :class:`ShiftToGlobalMean` adds a spatially uniform amount to the remaining
   ``conserve_global_mean_names`` so their area-weighted mean equals the input's.
4. :class:`ConserveDryAir` (ACE's ``conserve_dry_air``) runs last because the
   dry-air mass depends on ``specific_total_water_<k>``, which steps 1-3 may
   change; running it first would let them break the dry-air budget again. It
   only changes ``PRESsfc``, which therefore may not also be forced positive or
   mean-conserved (checked at build).

Because the variable sets are disjoint and only step 4 reads what others
write, every invariant holds after the whole chain.
"""

import abc
import dataclasses
from collections.abc import Sequence

import torch

from fme.ace.corrector.corrector import CorrectorABC
from fme.ace.corrector.inverse import (
    CorrectorInverse,
    nearest_clamp_and_scale_preimage,
    nearest_clamp_preimage,
    nearest_point_on_line,
    nearest_shift_preimage,
)
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations
from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher
from fme.core.tensors import TensorDict, TensorMapping

SURFACE_PRESSURE_NAME = "PRESsfc"
TOTAL_WATER_PREFIX = "specific_total_water_"
GRAVITY = 9.80665  # m s-2, as in ACE


def _require(data: TensorMapping, name: str, *, where: str, why: str) -> torch.Tensor:
    try:
        return data[name]
    except KeyError:
        raise ValueError(
            f"{why} needs {name!r} in {where}, which has {sorted(data)}"
        ) from None


class CorrectionOperation(CorrectorInverse):
    """One constraint of the atmosphere corrector.

    Attributes:
        changed_names: the variables this operation changes.
    """

    changed_names: list[str]

    @abc.abstractmethod
    def __call__(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> TensorDict:
        """Corrected values of ``changed_names``, differentiable in ``gen_data``."""


class ForcePositive(CorrectionOperation):
    """Clamps variables at zero.

    Args:
        names: the variables to clamp.
    """

    def __init__(self, names: Sequence[str]):
        self.changed_names = list(names)

    def __call__(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> TensorDict:
        """``clamp(gen, min=0)`` for each variable."""
        return {name: gen_data[name].clamp(min=0.0) for name in self.changed_names}

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, input_data: TensorMapping
    ) -> TensorDict:
        """See :func:`fme.ace.corrector.inverse.nearest_clamp_preimage`."""
        return {
            name: nearest_clamp_preimage(raw[name], target[name])
            for name in self.changed_names
        }


class _GlobalMeanOperation(CorrectionOperation):
    """An operation that matches each variable's global mean to the input's.

    Args:
        names: the variables to conserve; they must be in the input state.
        gridded_operations: the grid's area-weighted reductions.
    """

    def __init__(self, names: Sequence[str], *, gridded_operations: LatLonOperations):
        self.changed_names = list(names)
        self._ops = gridded_operations

    def _input_mean(self, input_data: TensorMapping, name: str) -> torch.Tensor:
        """The area-weighted mean of ``name`` in the input state, ``[..., 1, 1]``."""
        before = _require(
            input_data, name, where="input_data", why="conserve_global_mean_names"
        )
        return self._ops.area_weighted_mean(before, keepdim=True)


class ShiftToGlobalMean(_GlobalMeanOperation):
    """Adds a uniform amount so each variable's global mean equals the input's.

    ``out = gen - mean(gen) + mean(input)``, area-weighted, per sample.
    """

    def __call__(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> TensorDict:
        """The shifted variables."""
        out = {}
        for name in self.changed_names:
            gen = gen_data[name]
            shift = self._input_mean(input_data, name) - self._ops.area_weighted_mean(
                gen, keepdim=True
            )
            out[name] = gen + shift
        return out

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, input_data: TensorMapping
    ) -> TensorDict:
        """See :func:`fme.ace.corrector.inverse.nearest_shift_preimage`."""
        return {
            name: nearest_shift_preimage(
                raw[name], target[name], gridded_operations=self._ops
            )
            for name in self.changed_names
        }


class RescaleToGlobalMean(_GlobalMeanOperation):
    """Clamps at zero, then rescales so the global mean equals the input's.

    ``out = clamp(gen) * mean(input) / mean(clamp(gen))``. Both invariants hold
    when the input's mean is non-negative. If ``clamp(gen)`` is zero everywhere
    it cannot be rescaled; the input's mean is then added uniformly instead.
    """

    def __call__(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> TensorDict:
        """The clamped and rescaled variables."""
        out = {}
        for name in self.changed_names:
            clamped = gen_data[name].clamp(min=0.0)
            target_mean = self._input_mean(input_data, name)
            clamped_mean = self._ops.area_weighted_mean(clamped, keepdim=True)
            rescalable = clamped_mean > 0
            # where() evaluates both branches; keep the unused one finite so
            # its gradient is not NaN.
            safe_mean = torch.where(
                rescalable, clamped_mean, torch.ones_like(clamped_mean)
            )
            out[name] = torch.where(
                rescalable,
                clamped * (target_mean / safe_mean),
                clamped + target_mean,
            )
        return out

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, input_data: TensorMapping
    ) -> TensorDict:
        """See :func:`fme.ace.corrector.inverse.nearest_clamp_and_scale_preimage`."""
        return {
            name: nearest_clamp_and_scale_preimage(
                raw[name], target[name], gridded_operations=self._ops
            )
            for name in self.changed_names
        }


class ConserveDryAir(CorrectionOperation):
    """ACE's dry-air conservation: fixes ``PRESsfc`` so global dry air is conserved.

    The dry-air pressure of a column is ``PRESsfc - g * TWP`` with the total water
    path ``TWP = sum_k q_k * dp_k / g``, ``q_k = specific_total_water_<k>`` and
    the layer thicknesses ``dp_k = dak_k + dbk_k * PRESsfc`` of the hybrid
    coordinate. As in ACE, every column's dry-air pressure is shifted by the same
    amount (the global-mean error against the input) and ``PRESsfc`` is solved
    for, which gives ``PRESsfc - error / (1 - sum_k q_k * dbk_k)``: a shift that
    is uniform in dry air, and nearly (to within the column water fraction)
    uniform in ``PRESsfc``. Computed in float64, as in ACE.

    Args:
        gridded_operations: the grid's area-weighted reductions.
        vertical_coordinate: the hybrid sigma-pressure coordinate.
    """

    def __init__(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate,
    ):
        self.changed_names = [SURFACE_PRESSURE_NAME]
        self._ops = gridded_operations
        self._coordinate = vertical_coordinate
        self.water_names = [
            f"{TOTAL_WATER_PREFIX}{k}" for k in range(vertical_coordinate.n_levels)
        ]

    def _water(self, data: TensorMapping, where: str) -> torch.Tensor:
        levels = [
            _require(data, name, where=where, why="conserve_dry_air").double()
            for name in self.water_names
        ]
        return torch.stack(levels, dim=-1)

    def dry_air_pressure(
        self, data: TensorMapping, *, where: str = "data"
    ) -> torch.Tensor:
        """Column dry-air pressure ``PRESsfc - g * TWP`` in float64."""
        surface_pressure = _require(
            data, SURFACE_PRESSURE_NAME, where=where, why="conserve_dry_air"
        ).double()
        water_path = self._coordinate.vertical_integral(
            self._water(data, where), surface_pressure, gravity=GRAVITY
        )
        return surface_pressure - GRAVITY * water_path

    def _pressure_per_dry_air(self, data: TensorMapping, where: str) -> torch.Tensor:
        # d PRESsfc / d (dry-air pressure) of each column.
        dbk = self._coordinate.bk.diff().to(torch.float64)
        return 1.0 / (1.0 - (self._water(data, where) * dbk).sum(dim=-1))

    def __call__(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> TensorDict:
        """The corrected ``PRESsfc``."""
        surface_pressure = gen_data[SURFACE_PRESSURE_NAME]
        error = self._ops.area_weighted_mean(
            self.dry_air_pressure(gen_data, where="gen_data"), keepdim=True
        ) - self._ops.area_weighted_mean(
            self.dry_air_pressure(input_data, where="input_data"), keepdim=True
        )
        corrected = surface_pressure.double() - error * self._pressure_per_dry_air(
            gen_data, "gen_data"
        )
        return {SURFACE_PRESSURE_NAME: corrected.to(surface_pressure.dtype)}

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, input_data: TensorMapping
    ) -> TensorDict:
        """Nearest point of the line ``target + a * dPRESsfc/d(dry air)``.

        The water in ``target`` must be the water this operation sees in the
        forward pass (the corrected target's).
        """
        target_pressure = target[SURFACE_PRESSURE_NAME]
        preimage = nearest_point_on_line(
            raw[SURFACE_PRESSURE_NAME].double(),
            base=target_pressure.double(),
            direction=self._pressure_per_dry_air(target, "target"),
            gridded_operations=self._ops,
        )
        return {SURFACE_PRESSURE_NAME: preimage.to(target_pressure.dtype)}


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

    def _states(
        self, input_data: TensorMapping, gen_data: TensorMapping
    ) -> list[TensorDict]:
        """The full state before each operation, then after the last one."""
        states = [dict(gen_data)]
        for operation in self.operations:
            states.append({**states[-1], **operation(input_data, states[-1])})
        return states

    def __call__(
        self,
        input_data: TensorMapping,
        gen_data: TensorMapping,
        forcing_data: TensorMapping,
    ) -> TensorDict:
        """Corrected values of ``changed_names``; see :class:`CorrectorABC`."""
        final = self._states(input_data, gen_data)[-1]
        return {name: final[name] for name in self.changed_names}

    def nearest_preimage(
        self,
        raw: TensorMapping,
        target: TensorMapping,
        input_data: TensorMapping,
    ) -> TensorDict:
        """Pre-image of ``C(target)`` nearest to ``raw``; see :class:`CorrectorInverse`.

        The target is first corrected, so it satisfies every constraint; then
        the operations' inverses run last to first, each given the raw state
        that entered it in the forward pass of ``raw`` and the pre-image built
        so far as its target. The operations change disjoint variables, so the
        pre-image set is a product over them and this is the nearest pre-image
        in the summed area-weighted L2 norm (up to the degenerate cases noted in
        :mod:`fme.ace.corrector.inverse`).
        """
        raw_states = self._states(input_data, raw)
        preimage = self._states(input_data, target)[-1]
        for operation, raw_state in zip(
            reversed(self.operations), reversed(raw_states[:-1]), strict=True
        ):
            preimage.update(operation.nearest_preimage(raw_state, preimage, input_data))
        return {name: preimage[name] for name in self.changed_names}


@dataclasses.dataclass
class AtmosphereCorrectorConfig:
    """Physical constraints applied to each step's prediction.

    YAML: ``corrector: {type: atmosphere_corrector, config: {...}}``. Names are
    matched like everywhere in fme (:class:`NameAndPrefixMatcher`): a bare
    ``specific_total_water`` selects every level.

    Attributes:
        conserve_global_mean_names: variables whose area-weighted global mean is
            set to its value in the step's input state (so they must be
            prognostic). Additive uniform shift, or a multiplicative rescale for
            variables also in ``force_positive_names``.
        force_positive_names: variables clamped at zero.
        conserve_dry_air: conserve the global dry-air mass as ACE does, by
            adjusting ``PRESsfc``; needs a hybrid vertical coordinate, and
            ``PRESsfc`` and ``specific_total_water_<k>`` for every level among
            the predicted variables.
    """

    conserve_global_mean_names: list[str] = dataclasses.field(default_factory=list)
    force_positive_names: list[str] = dataclasses.field(default_factory=list)
    conserve_dry_air: bool = False

    def __post_init__(self):
        for field_name in ("conserve_global_mean_names", "force_positive_names"):
            for entry in getattr(self, field_name):
                if entry.strip("_") == "":
                    raise ValueError(
                        f"{field_name} has the empty name {entry!r}; use variable "
                        "names, level prefixes (name_) or level names (name_3)"
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
    ) -> AtmosphereCorrector:
        """Check the names against the predicted variables and build the chain.

        Args:
            gridded_operations: the grid's area-weighted reductions.
            vertical_coordinate: the dataset's hybrid coordinate, if it has one.
            out_names: the variables the step predicts.

        Raises:
            ValueError: a name matching no predicted variable, or
                ``conserve_dry_air`` without what it needs.
        """
        out_names = list(out_names)
        positive = self._select("force_positive_names", out_names)
        conserved = self._select("conserve_global_mean_names", out_names)
        operations: list[CorrectionOperation] = []
        positive_only = [name for name in positive if name not in conserved]
        if positive_only:
            operations.append(ForcePositive(positive_only))
        rescaled = [name for name in positive if name in conserved]
        if rescaled:
            operations.append(
                RescaleToGlobalMean(rescaled, gridded_operations=gridded_operations)
            )
        shifted = [name for name in conserved if name not in positive]
        if shifted:
            operations.append(
                ShiftToGlobalMean(shifted, gridded_operations=gridded_operations)
            )
        if self.conserve_dry_air:
            operations.append(
                self._build_dry_air(
                    gridded_operations=gridded_operations,
                    vertical_coordinate=vertical_coordinate,
                    out_names=out_names,
                    already_changed=positive + conserved,
                )
            )
        return AtmosphereCorrector(operations)

    @staticmethod
    def _build_dry_air(
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate | None,
        out_names: list[str],
        already_changed: list[str],
    ) -> ConserveDryAir:
        if vertical_coordinate is None:
            raise ValueError(
                "corrector conserve_dry_air=true needs a hybrid vertical coordinate "
                "(ak_<i>/bk_<i> in the dataset), but the dataset has none; set "
                "conserve_dry_air to false or use data with ak/bk"
            )
        operation = ConserveDryAir(
            gridded_operations=gridded_operations,
            vertical_coordinate=vertical_coordinate,
        )
        needed = [SURFACE_PRESSURE_NAME, *operation.water_names]
        missing = [name for name in needed if name not in out_names]
        if missing:
            raise ValueError(
                f"corrector conserve_dry_air=true needs {needed} among the predicted "
                f"variables; missing: {missing}"
            )
        if SURFACE_PRESSURE_NAME in already_changed:
            raise ValueError(
                f"corrector conserve_dry_air=true sets {SURFACE_PRESSURE_NAME}, so it "
                "cannot also be in force_positive_names or conserve_global_mean_names"
            )
        return operation
