"""Corrector operations on single variables: positivity, global means, dry air.

Each operation is one constraint. It returns only the variables it changed
(its ``changed_names``), is differentiable in the generated data, and knows
the nearest pre-image of a corrected target (see
:mod:`fme.ace.corrector.inverse`).
"""

import abc
import dataclasses
from collections.abc import Sequence

import torch

from fme.ace import physics
from fme.ace.corrector.corrector import CorrectorState
from fme.ace.corrector.inverse import (
    nearest_clamp_and_scale_preimage,
    nearest_clamp_preimage,
    nearest_point_on_line,
    nearest_shift_preimage,
)
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class CorrectionContext:
    """What an operation reads besides the generated data.

    Attributes:
        input_data: the state at the start of the step.
        forcing_data: data at the next time.
        state: the rollout's corrector state (reference values from the
            initial condition).
    """

    input_data: TensorMapping
    forcing_data: TensorMapping
    state: CorrectorState


def seeded_context(
    operations: "Sequence[CorrectionOperation]",
    input_data: TensorMapping,
    forcing_data: TensorMapping | None = None,
    state: CorrectorState | None = None,
) -> CorrectionContext:
    """A context whose state is ``state``, or seeded from ``input_data`` for ``operations``.

    Without a state, ``input_data`` is taken as the rollout's initial
    condition (a one-step rollout).
    """
    if state is None:
        state = CorrectorState()
        for operation in operations:
            operation.seed_state(state, input_data)
    return CorrectionContext(
        input_data=input_data,
        forcing_data=forcing_data if forcing_data is not None else {},
        state=state,
    )


def require(data: TensorMapping, name: str, *, where: str, why: str) -> torch.Tensor:
    """``data[name]`` or a ValueError naming what is missing where."""
    try:
        return data[name]
    except KeyError:
        raise ValueError(
            f"{why} needs {name!r} in {where}, which has {sorted(data)}"
        ) from None


def stack_levels(data: TensorMapping, names: Sequence[str]) -> torch.Tensor:
    """``[..., n_levels]`` from per-level tensors."""
    return torch.stack([data[name] for name in names], dim=-1)


class CorrectionOperation(abc.ABC):
    """One constraint of the atmosphere corrector.

    Attributes:
        changed_names: the variables this operation changes; exactly the keys
            of what ``__call__`` returns.
    """

    changed_names: list[str]

    def seed_state(self, state: CorrectorState, input_data: TensorMapping) -> None:
        """Fill the fields of ``state`` this operation needs from the initial condition.

        Most operations need none and leave ``state`` as it is.
        """
        return None

    @abc.abstractmethod
    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """Corrected values of ``changed_names``, differentiable in ``gen_data``."""

    @abc.abstractmethod
    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """A value of ``changed_names`` this operation maps to ``target``.

        Args:
            raw: the full state entering this operation in the forward pass of
                the network's output.
            target: a full state whose other variables are those this
                operation sees and whose ``changed_names`` satisfy its
                constraint.
            context: as given to ``__call__``.

        Returns:
            The pre-image nearest to ``raw`` in the area-weighted L2 norm.
        """


class ForcePositive(CorrectionOperation):
    """Clamps variables at zero (ACE's ``force_positive_names``).

    Args:
        names: the variables to clamp.
        keep_gradient: ACE's ``keep_gradient_through_clamps``: the value is
            clamped, the gradient passes as if it were not (straight-through).
    """

    def __init__(self, names: Sequence[str], *, keep_gradient: bool = False):
        self.changed_names = list(names)
        self.keep_gradient = keep_gradient

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """``clamp(gen, min=0)`` for each variable."""
        out = {}
        for name in self.changed_names:
            clamped = gen_data[name].clamp(min=0.0)
            if self.keep_gradient:
                clamped = gen_data[name] + (clamped - gen_data[name]).detach()
            out[name] = clamped
        return out

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
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
        before = require(
            input_data, name, where="input_data", why="conserve_global_mean_names"
        )
        return self._ops.area_weighted_mean(before, keepdim=True)

    @abc.abstractmethod
    def _variable_preimage(
        self, raw: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """The nearest pre-image of one variable's corrected ``target``."""

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """Each variable's nearest pre-image, variable by variable."""
        return {
            name: self._variable_preimage(raw[name], target[name])
            for name in self.changed_names
        }


class ShiftToGlobalMean(_GlobalMeanOperation):
    """Adds a uniform amount so each variable's global mean equals the input's.

    ``out = gen - mean(gen) + mean(input)``, area-weighted, per sample.
    """

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The shifted variables."""
        out = {}
        for name in self.changed_names:
            gen = gen_data[name]
            shift = self._input_mean(
                context.input_data, name
            ) - self._ops.area_weighted_mean(gen, keepdim=True)
            out[name] = gen + shift
        return out

    def _variable_preimage(
        self, raw: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """See :func:`fme.ace.corrector.inverse.nearest_shift_preimage`."""
        return nearest_shift_preimage(raw, target, gridded_operations=self._ops)


class RescaleToGlobalMean(_GlobalMeanOperation):
    """Clamps at zero, then rescales so the global mean equals the input's.

    ``out = clamp(gen) * mean(input) / mean(clamp(gen))``. Both invariants hold
    when the input's mean is non-negative. If ``clamp(gen)`` is zero everywhere
    it cannot be rescaled; the input's mean is then added uniformly instead.
    """

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The clamped and rescaled variables."""
        out = {}
        for name in self.changed_names:
            clamped = gen_data[name].clamp(min=0.0)
            target_mean = self._input_mean(context.input_data, name)
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

    def _variable_preimage(
        self, raw: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """See :func:`fme.ace.corrector.inverse.nearest_clamp_and_scale_preimage`."""
        return nearest_clamp_and_scale_preimage(
            raw, target, gridded_operations=self._ops
        )


class ConserveDryAir(CorrectionOperation):
    """ACE's ``conserve_dry_air``: pins the global dry-air mass to the initial one.

    The reference is the initial condition's area-weighted mean dry-air
    pressure ``mean(ps - g * TWP)`` (:mod:`fme.ace.physics`), seeded once per
    rollout into :class:`CorrectorState` and carried through every step. Each
    column's dry-air pressure is shifted by the same amount (the global error
    against the reference) and ``PRESsfc`` is solved for at the predicted
    water. Computed in float64, as in ACE.

    Args:
        gridded_operations: the grid's area-weighted reductions.
        vertical_coordinate: the hybrid sigma-pressure coordinate.
        surface_pressure_name: the surface pressure variable (``PRESsfc``).
        water_names: ``specific_total_water_<k>`` for every level.
    """

    def __init__(
        self,
        *,
        gridded_operations: LatLonOperations,
        vertical_coordinate: HybridSigmaPressureCoordinate,
        surface_pressure_name: str,
        water_names: Sequence[str],
    ):
        self.changed_names = [surface_pressure_name]
        self._ops = gridded_operations
        self._coordinate = vertical_coordinate
        self.surface_pressure_name = surface_pressure_name
        self.water_names = list(water_names)

    def _water(self, data: TensorMapping, where: str) -> torch.Tensor:
        for name in self.water_names:
            require(data, name, where=where, why="conserve_dry_air")
        return stack_levels(data, self.water_names)

    def dry_air_pressure(
        self, data: TensorMapping, *, where: str = "data"
    ) -> torch.Tensor:
        """Column dry-air pressure ``PRESsfc - g * TWP`` (Pa), as float64.

        Computed in the data's precision and then widened, as ACE does, so the
        corrected fields match the released corrector's to rounding.
        """
        surface_pressure = require(
            data, self.surface_pressure_name, where=where, why="conserve_dry_air"
        )
        return physics.dry_air_pressure(
            surface_pressure,
            self._water(data, where).to(surface_pressure.dtype),
            coordinate=self._coordinate,
        ).double()

    def seed_state(self, state: CorrectorState, input_data: TensorMapping) -> None:
        """Set the reference dry air from the initial condition, if not yet set."""
        if state.global_dry_air_pressure is None:
            state.global_dry_air_pressure = self._ops.area_weighted_mean(
                self.dry_air_pressure(input_data, where="the initial condition"),
                keepdim=True,
            ).detach()

    def __call__(
        self, context: CorrectionContext, gen_data: TensorMapping
    ) -> TensorDict:
        """The corrected ``PRESsfc``."""
        reference = context.state.global_dry_air_pressure
        assert reference is not None, "the corrector state was not seeded"
        surface_pressure = gen_data[self.surface_pressure_name]
        dry_air = self.dry_air_pressure(gen_data, where="gen_data")
        error = self._ops.area_weighted_mean(dry_air, keepdim=True) - reference.to(
            dry_air
        )
        corrected = physics.surface_pressure_from_dry_air(
            dry_air - error,
            self._water(gen_data, "gen_data").double(),
            coordinate=self._coordinate,
        )
        return {self.surface_pressure_name: corrected.to(surface_pressure.dtype)}

    def nearest_preimage(
        self, raw: TensorMapping, target: TensorMapping, context: CorrectionContext
    ) -> TensorDict:
        """Nearest point of the line ``target + a * dPRESsfc/d(dry air)``.

        The correction shifts every column's dry air by one constant, so the
        pre-images of ``target`` are ``target`` plus a multiple of
        ``d PRESsfc / d(dry air)`` at the target's water.
        """
        target_pressure = target[self.surface_pressure_name]
        direction = physics.surface_pressure_per_dry_air(
            self._water(target, "target").double(), coordinate=self._coordinate
        )
        preimage = nearest_point_on_line(
            raw[self.surface_pressure_name].double(),
            base=target_pressure.double(),
            direction=direction,
            gridded_operations=self._ops,
        )
        return {self.surface_pressure_name: preimage.to(target_pressure.dtype)}
