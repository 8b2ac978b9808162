"""Per-point loss scaling: detached weights multiplying a pointwise loss.

A scaling changes how much each point (sample, channel, grid cell) counts in a
loss term. Inside a term the order is: per-point loss → scaling weights
(detached) → mean over valid points → term weight. Weights are computed from
the loss-normalised, packed tensors ``[batch, channel, lat, lon]`` and never
carry gradients: the model cannot lower its loss by changing the weights.
"""

import abc
import dataclasses
import re
from collections.abc import Sequence

import torch

from fme.core.gridded_ops import LatLonOperations

LOSS_SCALING_TYPES = ("area", "level_profile", "magnitude")
MAGNITUDE_REFERENCES = ("target", "prediction")
DEFAULT_MAGNITUDE_REFERENCE = "target"
DEFAULT_MAGNITUDE_FLOOR = 0.1

_LEVEL_SUFFIX = re.compile(r"_(\d+)$")


@dataclasses.dataclass
class LossScalingConfig:
    """One per-point scaling of a loss term.

    Attributes:
        type: one of ``"area"`` (cell-area weights from the grid, normalised to
            mean one over the grid so the loss keeps its scale), ``"level_profile"``
            (weight ``decay ** k`` for a variable whose name ends in ``_<k>``,
            weight 1 for variables without a level suffix) or ``"magnitude"``
            (weight ``1 / max(|reference|, floor)`` in loss-normalised space).
        decay: base of the level profile; required for ``level_profile`` and
            only allowed there. Must be positive.
        reference: for ``magnitude`` only: whose magnitude divides the loss,
            ``"target"`` (default) or ``"prediction"``.
        floor: for ``magnitude`` only: lower bound on the magnitude, so weights
            stay at most ``1 / floor``. Must be positive; default 0.1.
    """

    type: str
    decay: float | None = None
    reference: str | None = None
    floor: float | None = None

    def __post_init__(self):
        if self.type not in LOSS_SCALING_TYPES:
            raise ValueError(
                f"loss scaling type: got {self.type!r}; allowed: "
                f"{list(LOSS_SCALING_TYPES)}"
            )
        if self.type != "level_profile" and self.decay is not None:
            raise ValueError(
                f"loss scaling field 'decay' only applies to type 'level_profile', "
                f"not {self.type!r}"
            )
        if self.type != "magnitude":
            for name in ("reference", "floor"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"loss scaling field {name!r} only applies to type "
                        f"'magnitude', not {self.type!r}"
                    )
        if self.type == "level_profile":
            if self.decay is None or not self.decay > 0:
                raise ValueError(
                    "loss scaling 'level_profile' needs field 'decay' > 0 "
                    f"(weight = decay ** level), got {self.decay!r}"
                )
        if self.reference is not None and self.reference not in MAGNITUDE_REFERENCES:
            raise ValueError(
                f"loss scaling field 'reference': got {self.reference!r}; allowed: "
                f"{list(MAGNITUDE_REFERENCES)}"
            )
        if self.floor is not None and not self.floor > 0:
            raise ValueError(
                f"loss scaling field 'floor' must be > 0, got {self.floor!r}"
            )

    def build(
        self, names: Sequence[str], gridded_ops: LatLonOperations | None
    ) -> "LossScaling":
        """The scaling for packed channels ``names`` (in packing order).

        Raises:
            ValueError: for ``area`` scaling without ``gridded_ops``.
        """
        if self.type == "area":
            if gridded_ops is None:
                raise ValueError(
                    "loss scaling type 'area' needs grid area weights, but no "
                    "gridded operations were given to build()"
                )
            return AreaScaling(gridded_ops)
        if self.type == "level_profile":
            assert self.decay is not None  # checked in __post_init__
            return LevelProfileScaling(names, decay=self.decay)
        return MagnitudeScaling(
            reference=self.reference or DEFAULT_MAGNITUDE_REFERENCE,
            floor=self.floor if self.floor is not None else DEFAULT_MAGNITUDE_FLOOR,
        )


class LossScaling(abc.ABC):
    """Detached per-point weights for a pointwise loss."""

    @abc.abstractmethod
    def weights(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weights broadcastable to ``[batch, channel, lat, lon]`` (may need grad)."""

    def __call__(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Detached weights broadcastable to ``predicted``.

        Args:
            predicted: loss-normalised prediction ``[batch, channel, lat, lon]``.
            target: loss-normalised target, same shape, without NaNs.
        """
        return self.weights(predicted, target).detach()


class AreaScaling(LossScaling):
    """Cell-area (quadrature) weights, normalised to mean one over the grid.

    Args:
        gridded_ops: provides ``area_weights`` ``[lat, lon]``.
    """

    def __init__(self, gridded_ops: LatLonOperations):
        area = gridded_ops.area_weights
        self._weights = area * (area.numel() / area.sum())

    def weights(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if tuple(predicted.shape[-2:]) != tuple(self._weights.shape):
            raise ValueError(
                f"area scaling: grid is {tuple(self._weights.shape)} but the loss "
                f"got tensors of shape {tuple(predicted.shape)}"
            )
        return self._weights.to(device=predicted.device, dtype=predicted.dtype)


def level_of(name: str) -> int | None:
    """The vertical level parsed from a ``_<k>`` suffix, or None for 2D variables."""
    match = _LEVEL_SUFFIX.search(name)
    return int(match.group(1)) if match else None


class LevelProfileScaling(LossScaling):
    """A fixed weight ``decay ** k`` per channel at vertical level ``k``.

    Variables without a ``_<k>`` suffix (2D variables) get weight 1.

    Args:
        names: the packed channel names, in order.
        decay: base of the exponential profile.
    """

    def __init__(self, names: Sequence[str], *, decay: float):
        levels = [level_of(name) for name in names]
        self.channel_weights = torch.tensor(
            [1.0 if k is None else decay**k for k in levels], dtype=torch.float64
        )

    def weights(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if predicted.shape[1] != self.channel_weights.numel():
            raise ValueError(
                f"level_profile scaling built for {self.channel_weights.numel()} "
                f"channels, got tensors with {predicted.shape[1]} channels"
            )
        w = self.channel_weights.to(device=predicted.device, dtype=predicted.dtype)
        return w[None, :, None, None]


class MagnitudeScaling(LossScaling):
    """Divides the loss by a floored local magnitude: ``1 / max(|ref|, floor)``.

    Args:
        reference: ``"target"`` or ``"prediction"``.
        floor: lower bound on the magnitude.
    """

    def __init__(self, *, reference: str, floor: float):
        if reference not in MAGNITUDE_REFERENCES:
            raise ValueError(
                f"magnitude scaling reference: got {reference!r}; allowed: "
                f"{list(MAGNITUDE_REFERENCES)}"
            )
        self.reference = reference
        self.floor = floor

    def weights(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ref = target if self.reference == "target" else predicted
        return 1.0 / ref.detach().abs().clamp(min=self.floor)


def combined_weights(
    scalings: Sequence[LossScaling], predicted: torch.Tensor, target: torch.Tensor
) -> torch.Tensor | None:
    """The product of all scalings' detached weights, or None when there are none."""
    result: torch.Tensor | None = None
    for scaling in scalings:
        w = scaling(predicted, target)
        result = w if result is None else result * w
    return result
