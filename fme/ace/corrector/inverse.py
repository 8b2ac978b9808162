"""Local inverses of the corrector: the nearest pre-image of a corrected target.

Physics-inversion (SIP) training through the corrector needs, for a target
``y*`` in corrected space and the network's current raw output ``x``, a raw
state ``x~`` that the corrector maps onto (the corrected version of) ``y*`` and
that is as close to ``x`` as possible. Every operation of the atmosphere
corrector is many-to-one, so its pre-images form a set; this module picks the
nearest point of that set.

Distances use the area-weighted L2 norm of each sample,
``||v||^2 = sum over variables of area_weighted_mean(v ** 2)``, with the
normalised area weights of :class:`fme.core.gridded_ops.LatLonOperations`. The
operations act on disjoint variables (see
:mod:`fme.ace.corrector.atmosphere`), so the sum over variables separates and
each variable's pre-image is chosen on its own.

Pre-image sets used here, for a target ``t`` already satisfying the constraint:

- uniform shift (global-mean conservation, ``x + c``): the line ``t + a * 1``;
- clamp at zero: ``x_i = t_i`` where ``t_i > 0``, any ``x_i <= 0`` elsewhere;
- clamp then rescale to a global mean: ``x_i = s * t_i`` (``s > 0``) where
  ``t_i > 0``, any ``x_i <= 0`` elsewhere;
- ACE's dry-air fix (a uniform shift of every column's dry-air pressure): the
  line ``t + a * v`` with ``v = 1 / (1 - sum_k q_k * dbk_k)``;
- a rescale to a prescribed global mean (the moisture budget's precipitation
  or evaporation fix, ``x * m / mean(x)``): the ray ``s * t``, ``s > 0``;
- recomputing a field from others (the budget's advection residual): every
  value, so the nearest is the raw value itself;
- a clip from above at a ceiling ``c`` (frozen precipitation at most total
  precipitation): ``x_i = t_i`` where ``t_i < c_i``, any ``x_i >= c_i``
  elsewhere;
- the energy budget's uniform warming of every level: the line ``t + a * 1``
  over all levels together.

Operations that change the same variable one after another (a clamp, then a
budget rescale of precipitation) are pulled back one at a time, last first:
the result is a pre-image, and each stage is the nearest for its own stage.
"""

import abc
from typing import TYPE_CHECKING

import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorDict, TensorMapping

if TYPE_CHECKING:
    from fme.ace.corrector.corrector import CorrectorState


class CorrectorInverse(abc.ABC):
    """Something that can map a corrected target back to a nearby raw state."""

    @abc.abstractmethod
    def nearest_preimage(
        self,
        raw: TensorMapping,
        target: TensorMapping,
        input_data: TensorMapping,
        *,
        forcing_data: TensorMapping | None = None,
        state: "CorrectorState | None" = None,
    ) -> TensorDict:
        """Pre-image of the corrected target nearest to the raw output.

        Args:
            raw: the uncorrected output ``x``, ``{name: [batch, lat, lon]}``,
                holding every variable the correction reads.
            target: the target ``y*`` in corrected space, same layout.
            input_data: the state at the start of the step, as given to the
                corrector's forward pass.
            forcing_data: the data at the next time, as given to it.
            state: the rollout's corrector state, as given to it.

        Returns:
            ``{name: x~}`` for the variables the correction changes, where
            ``C(x~) = C(y*)`` (so ``C(x~) = y*`` when ``y*`` already satisfies
            the constraints) and ``x~`` is the pre-image nearest to ``raw``.
        """

    def inverse(
        self,
        raw: TensorMapping,
        target: TensorMapping,
        input_data: TensorMapping,
        *,
        forcing_data: TensorMapping | None = None,
        state: "CorrectorState | None" = None,
    ) -> TensorDict:
        """Alias of :meth:`nearest_preimage`."""
        return self.nearest_preimage(
            raw, target, input_data, forcing_data=forcing_data, state=state
        )


def _weighted_inner(
    a: torch.Tensor, b: torch.Tensor, gridded_operations: LatLonOperations
) -> torch.Tensor:
    return gridded_operations.area_weighted_mean(a * b, keepdim=True)


def nearest_point_on_line(
    raw: torch.Tensor,
    *,
    base: torch.Tensor,
    direction: torch.Tensor,
    gridded_operations: LatLonOperations,
) -> torch.Tensor:
    """The point ``base + a * direction`` nearest to ``raw``, per sample.

    ``a = <direction, raw - base> / <direction, direction>`` in the
    area-weighted inner product over the last two (lat, lon) dims. A zero
    direction gives ``base``.
    """
    numerator = _weighted_inner(direction, raw - base, gridded_operations)
    denominator = _weighted_inner(direction, direction, gridded_operations)
    positive = denominator > 0
    safe_denominator = torch.where(positive, denominator, torch.ones_like(denominator))
    step = torch.where(
        positive, numerator / safe_denominator, torch.zeros_like(numerator)
    )
    return base + step * direction


def nearest_shift_preimage(
    raw: torch.Tensor, target: torch.Tensor, *, gridded_operations: LatLonOperations
) -> torch.Tensor:
    """Nearest pre-image under a uniform additive shift (global-mean fix).

    The pre-images of ``target`` are ``target + c``; the nearest to ``raw`` has
    ``c = area_weighted_mean(raw - target)``.
    """
    return nearest_point_on_line(
        raw,
        base=target,
        direction=torch.ones_like(target),
        gridded_operations=gridded_operations,
    )


def nearest_clamp_preimage(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Nearest pre-image under ``clamp(min=0)``, point by point.

    ``x~_i = y*_i`` where ``y*_i > 0``; elsewhere the nearest non-positive value,
    ``min(raw_i, 0)``. A negative target is treated as its clamp, zero.
    """
    return torch.where(target > 0, target, raw.clamp(max=0.0))


def nearest_clamp_and_scale_preimage(
    raw: torch.Tensor, target: torch.Tensor, *, gridded_operations: LatLonOperations
) -> torch.Tensor:
    """Nearest pre-image under a clamp at zero followed by a rescale to a mean.

    With ``t = clamp(target, min=0)``, pre-images are ``s * t`` (``s > 0``) where
    ``t > 0`` and any non-positive value elsewhere. The nearest has
    ``s = <t, raw> / <t, t>`` (area-weighted) and ``min(raw, 0)`` off the
    support of ``t``. When that ``s`` is not positive no nearest pre-image
    exists (the infimum is at ``s -> 0``) and ``s = 1`` is used, which is still
    a pre-image.
    """
    positive_target = target.clamp(min=0.0)
    numerator = _weighted_inner(positive_target, raw, gridded_operations)
    denominator = _weighted_inner(positive_target, positive_target, gridded_operations)
    valid = (numerator > 0) & (denominator > 0)
    safe_denominator = torch.where(valid, denominator, torch.ones_like(denominator))
    scale = torch.where(valid, numerator / safe_denominator, torch.ones_like(numerator))
    return torch.where(positive_target > 0, scale * positive_target, raw.clamp(max=0.0))


def nearest_scale_preimage(
    raw: torch.Tensor,
    target: torch.Tensor,
    *,
    gridded_operations: LatLonOperations,
    non_negative_input: bool = False,
) -> torch.Tensor:
    """Nearest pre-image under a rescale to a prescribed global mean.

    ``x -> x * m / mean(x)`` maps every ``s * target`` (``s != 0``) to
    ``target``; the nearest to ``raw`` has ``s = <target, raw> / <target,
    target>``. With ``non_negative_input`` (the rescale follows a clamp at
    zero, so its input is non-negative) only the ``s`` with ``s * target >= 0``
    are pre-images (``target`` has one sign); when the nearest ``s`` has the
    wrong sign the infimum is at ``s -> 0``, which is not a pre-image, and
    ``s = +-1`` is used. ``s = 0`` (no pre-image nearer) gives the target.
    """
    numerator = _weighted_inner(target, raw, gridded_operations)
    denominator = _weighted_inner(target, target, gridded_operations)
    safe_denominator = torch.where(
        denominator > 0, denominator, torch.ones_like(denominator)
    )
    scale = numerator / safe_denominator
    if non_negative_input:
        sign = torch.where(
            gridded_operations.area_weighted_mean(target, keepdim=True) < 0,
            -torch.ones_like(scale),
            torch.ones_like(scale),
        )
        valid = (scale * sign > 0) & (denominator > 0)
        scale = torch.where(valid, scale, sign)
    else:
        valid = (scale != 0) & (denominator > 0)
        scale = torch.where(valid, scale, torch.ones_like(scale))
    return scale * target


def nearest_ceiling_preimage(
    raw: torch.Tensor, target: torch.Tensor, ceiling: torch.Tensor
) -> torch.Tensor:
    """Nearest pre-image under ``minimum(x, ceiling)``, point by point.

    ``x~_i = t_i`` where ``t_i < c_i``; where the target sits at the ceiling,
    any ``x_i >= c_i`` maps there and the nearest is ``max(raw_i, c_i)``.
    """
    return torch.where(target < ceiling, target, torch.maximum(raw, ceiling))
