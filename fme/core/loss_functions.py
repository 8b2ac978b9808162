"""Per-channel loss functions on packed tensors, and their config.

A ``LossFunction`` reduces packed, loss-normalised tensors to one loss per
channel; ``LossConfig`` names one (``MSE``, ``L1``, ``LpLoss``,
``AreaWeightedMSE``, ``EnsembleLoss``, ``NaN``) and builds it.
``GlobalMeanLpLoss`` scores area-weighted global means across channels. The
dict-level losses that use these live in ``fme.core.loss``.

Layouts: predictions are packed to ``[batch, member, channel, lat, lon]`` and
targets to ``[batch, channel, lat, lon]``. Non-ensemble losses compare every
member with the target and average over members; ``EnsembleLoss`` scores the
ensemble as a whole.
"""

import abc
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.loss_scaling import LossScaling, combined_weights
from fme.core.number_check import check_number

LOSS_TYPES = ("MSE", "L1", "LpLoss", "AreaWeightedMSE", "EnsembleLoss", "NaN")
GLOBAL_MEAN_LOSS_TYPES = ("LpLoss",)
_ALLOWED_KWARGS: dict[str, tuple[str, ...]] = {
    "MSE": (),
    "L1": (),
    "LpLoss": ("p",),
    "AreaWeightedMSE": (),
    "EnsembleLoss": ("crps_weight", "energy_score_weight"),
    "NaN": (),
}


def validate_loss(*, field: str, type_: str, kwargs: Mapping[str, Any]) -> None:
    """Check a loss type and its keyword arguments.

    Args:
        field: config path used in error messages (e.g. ``"loss"``).
        type_: the loss type; must be in ``LOSS_TYPES``.
        kwargs: its keyword arguments; only the keys the type accepts, numbers.

    Raises:
        ValueError: for an unknown type, unknown or non-numeric kwargs, ``p < 1``
            or invalid ``EnsembleLoss`` weights.
    """
    if type_ not in LOSS_TYPES:
        raise ValueError(f"{field}: got type {type_!r}; allowed: {list(LOSS_TYPES)}")
    allowed = _ALLOWED_KWARGS[type_]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{field} kwargs: unknown key(s) {unknown} for type {type_!r}; "
            f"allowed: {list(allowed)}"
        )
    values = {k: check_number(v, path=f"{field} kwargs.{k}") for k, v in kwargs.items()}
    if values.get("p", 2.0) < 1:
        raise ValueError(f"{field} kwargs.p must be >= 1, got {values['p']}")
    if type_ == "EnsembleLoss":
        crps = values.get("crps_weight", 1.0)
        energy = values.get("energy_score_weight", 0.0)
        if crps < 0 or energy < 0 or crps + energy <= 0:
            raise ValueError(
                f"{field} kwargs: crps_weight and energy_score_weight must be >= 0 "
                f"with a positive sum, got {crps} and {energy}"
            )


@dataclasses.dataclass
class LossConfig:
    """A loss function: its type and keyword arguments.

    Attributes:
        type: one of ``MSE``, ``L1``, ``LpLoss`` (relative Lp norm
            ``||x - y||_p / ||y||_p`` per sample and channel, kwargs ``p``,
            default 2), ``AreaWeightedMSE`` (needs grid area weights),
            ``EnsembleLoss`` (fair CRPS over ensemble members, kwargs
            ``crps_weight`` default 1 and ``energy_score_weight`` default 0;
            needs ``n_ensemble >= 2``), ``NaN`` (always NaN, for tests).
        kwargs: keyword arguments of the loss type (see ``type``).
    """

    type: str = "MSE"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        validate_loss(field="loss", type_=self.type, kwargs=self.kwargs)

    @property
    def requires_ensemble(self) -> bool:
        """Whether this loss needs several ensemble members."""
        return self.type == "EnsembleLoss"

    def build(self, *, gridded_ops: LatLonOperations | None = None) -> "LossFunction":
        """The loss function; ``AreaWeightedMSE`` raises without ``gridded_ops``."""
        kw = {k: float(v) for k, v in self.kwargs.items()}
        if self.type == "MSE":
            return MSELoss()
        if self.type == "L1":
            return L1Loss()
        if self.type == "LpLoss":
            return LpLoss(p=kw.get("p", 2.0))
        if self.type == "AreaWeightedMSE":
            if gridded_ops is None:
                raise ValueError(
                    "loss type 'AreaWeightedMSE' needs grid area weights, but no "
                    "gridded operations were given to build()"
                )
            return AreaWeightedMSELoss(gridded_ops)
        if self.type == "EnsembleLoss":
            return EnsembleLoss(
                crps_weight=kw.get("crps_weight", 1.0),
                energy_score_weight=kw.get("energy_score_weight", 0.0),
            )
        return NaNLoss()


def _fold_members(x: torch.Tensor, n_members: int) -> torch.Tensor:
    """Repeat ``[B, ...]`` to ``[B * n_members, ...]``, index ``b * n_members + e``."""
    if n_members == 1:
        return x
    return x[:, None].expand(x.shape[0], n_members, *x.shape[1:]).flatten(0, 1)


def _fold_ensemble(
    predict: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    scalings: Sequence[LossScaling],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Members folded into the batch: ``[B * E, ...]`` prediction, target,
    validity, and the combined (detached) scaling weights or None."""
    n_members = predict.shape[1]
    folded = predict.flatten(0, 1)
    target = _fold_members(target, n_members)
    return (
        folded,
        target,
        _fold_members(valid, n_members),
        combined_weights(scalings, folded, target),
    )


def _masked_channel_mean(
    values: torch.Tensor, denominator_weights: torch.Tensor, scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``sum(v * w * s) / sum(w)`` over all dims but dim 1.

    Returns the channel means ``[C]`` and whether each channel had any weight.
    """
    w = denominator_weights.expand_as(values)
    dims = [d for d in range(values.dim()) if d != 1]
    weighted = values * w if scale is None else values * w * scale
    numerator = weighted.sum(dim=dims)
    denominator = w.sum(dim=dims)
    active = denominator > 0
    safe = torch.where(active, denominator, torch.ones_like(denominator))
    return torch.where(active, numerator / safe, torch.zeros_like(numerator)), active


def _mean_over_valid_samples(
    values: torch.Tensor, has: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``[N, C]`` values over the samples where ``has``; per channel."""
    count = has.sum(dim=0)
    total = torch.where(has, values, torch.zeros_like(values)).sum(dim=0)
    return total / count.clamp(min=1), count > 0


class LossFunction(abc.ABC):
    """Reduces packed, loss-normalised tensors to one loss per channel."""

    supports_scaling: bool = True
    requires_ensemble: bool = False

    @abc.abstractmethod
    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        scalings: Sequence[LossScaling] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel losses.

        Args:
            predict: ``[batch, member, channel, lat, lon]``.
            target: ``[batch, channel, lat, lon]`` with NaNs already replaced.
            valid: ``[batch, channel, lat, lon]``, 1 where the point counts.
            scalings: detached per-point weights multiplying the integrand.

        Returns:
            The loss per channel ``[C]`` and whether each channel had any valid
            point ``[C]`` (bool).
        """


class _PointwiseLoss(LossFunction):
    """A pointwise loss averaged over valid points and ensemble members."""

    @abc.abstractmethod
    def pointwise(self, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss at every point."""

    def base_weights(self, like: torch.Tensor) -> torch.Tensor | float:
        """Weights of the mean before masking (1 for a plain mean)."""
        return 1.0

    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        scalings: Sequence[LossScaling] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p, t, v, scale = _fold_ensemble(predict, target, valid, scalings)
        return _masked_channel_mean(
            self.pointwise(p, t), v * self.base_weights(p), scale
        )


class MSELoss(_PointwiseLoss):
    """Mean squared error over valid points."""

    def pointwise(self, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (predict - target) ** 2


class L1Loss(_PointwiseLoss):
    """Mean absolute error over valid points."""

    def pointwise(self, predict: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (predict - target).abs()


class AreaWeightedMSELoss(MSELoss):
    """Squared error averaged with cell-area weights over valid points.

    Args:
        gridded_ops: provides the ``[lat, lon]`` area weights.
    """

    def __init__(self, gridded_ops: LatLonOperations):
        self.area_weights = gridded_ops.area_weights

    def base_weights(self, like: torch.Tensor) -> torch.Tensor | float:
        return self.area_weights.to(device=like.device, dtype=like.dtype)


class LpLoss(LossFunction):
    """Relative Lp error ``||x - y||_p / ||y||_p`` per sample, member and channel.

    The norm runs over (lat, lon) at valid points; scaling weights ``s`` weight
    both norms, ``(sum s |x - y|^p / sum s |y|^p)^(1/p)``. The ratio is
    averaged over members and over samples with a valid point. A target that
    is zero at every valid point gives an infinite loss.

    Args:
        p: order of the norm, >= 1.
    """

    def __init__(self, p: float = 2.0):
        self.p = p

    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        scalings: Sequence[LossScaling] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, v, scale = _fold_ensemble(predict, target, valid, scalings)
        w = v if scale is None else v * scale
        root_w = w.pow(1.0 / self.p)
        diff = torch.linalg.vector_norm(root_w * (x - y), ord=self.p, dim=(-2, -1))
        norm = torch.linalg.vector_norm(root_w * y, ord=self.p, dim=(-2, -1))
        has = v.sum(dim=(-2, -1)) > 0
        ratio = diff / torch.where(has, norm, torch.ones_like(norm))
        return _mean_over_valid_samples(ratio, has)


class EnsembleLoss(LossFunction):
    """Fair (unbiased) CRPS over ensemble members, optionally plus energy score.

    Pointwise fair CRPS with ``m`` members ``x_i`` and target ``y``:
    ``mean_i |x_i - y| - 1 / (2 m (m - 1)) * sum_{i != j} |x_i - x_j|``, averaged
    over valid points (scalings multiply this integrand; they see the ensemble
    mean as prediction). The energy score uses the same formula with the
    root-mean-square over the valid (lat, lon) points of a sample in place of
    ``|.|``, averaged over samples; it does not support scalings.

    Args:
        crps_weight: multiplies the CRPS.
        energy_score_weight: multiplies the energy score.
    """

    requires_ensemble = True

    def __init__(self, *, crps_weight: float = 1.0, energy_score_weight: float = 0.0):
        self.crps_weight = crps_weight
        self.energy_score_weight = energy_score_weight
        self.supports_scaling = energy_score_weight == 0

    @staticmethod
    def _fair_score(
        members: torch.Tensor,
        target: torch.Tensor,
        distance: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        m = members.shape[1]
        # running sums: memory stays at one field whatever the ensemble size
        skill = distance(members[:, 0] - target)
        for i in range(1, m):
            skill = skill + distance(members[:, i] - target)
        spread = torch.zeros_like(skill)
        for i in range(m):
            for j in range(i + 1, m):
                spread = spread + distance(members[:, i] - members[:, j])
        return skill / m - spread / (m * (m - 1))

    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        scalings: Sequence[LossScaling] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if predict.shape[1] < 2:
            raise ValueError(
                "EnsembleLoss needs predictions with n_ensemble >= 2 members, got "
                f"{predict.shape[1]}"
            )
        crps = self._fair_score(predict, target, torch.abs)
        scale = combined_weights(scalings, predict.mean(dim=1), target)
        loss, active = _masked_channel_mean(crps, valid, scale)
        loss = self.crps_weight * loss
        if self.energy_score_weight > 0:
            count = valid.sum(dim=(-2, -1), keepdim=True)
            root_w = (valid / count.clamp(min=1)).sqrt()

            def rms(x: torch.Tensor) -> torch.Tensor:
                return torch.linalg.vector_norm(root_w * x, ord=2, dim=(-2, -1))

            energy = self._fair_score(predict, target, rms)
            energy_loss, _ = _mean_over_valid_samples(energy, count[..., 0, 0] > 0)
            loss = loss + self.energy_score_weight * energy_loss
        return loss, active


class NaNLoss(LossFunction):
    """Always NaN in every channel (to test NaN handling downstream)."""

    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        scalings: Sequence[LossScaling] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_channels = predict.shape[2]
        nan = predict.sum() * float("nan")
        return nan.expand(n_channels), torch.ones(
            n_channels, dtype=torch.bool, device=predict.device
        )


class GlobalMeanLpLoss:
    """Relative Lp error of area-weighted global means, as a vector over channels.

    Per sample and member, global means are taken over the valid points of each
    channel (the same points for prediction and target); the relative Lp norm
    runs over channels, weighted by the per-variable weights (inactive channels
    weigh 0). The result is averaged over members and samples with a valid
    channel.

    Args:
        gridded_ops: provides the ``[lat, lon]`` area weights.
        p: order of the norm, >= 1.
    """

    def __init__(self, gridded_ops: LatLonOperations, *, p: float = 2.0):
        self.area_weights = gridded_ops.area_weights
        self.p = p

    def __call__(
        self,
        predict: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        channel_weights: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss; layouts as for ``LossFunction``, ``channel_weights`` ``[C]``."""
        area = self.area_weights.to(device=target.device, dtype=target.dtype)
        weights = valid * area
        denominator = weights.sum(dim=(-2, -1))
        has = denominator > 0
        safe = torch.where(has, denominator, torch.ones_like(denominator))
        mean_target = (weights * target).sum(dim=(-2, -1)) / safe
        mean_predict = (weights[:, None] * predict).sum(dim=(-2, -1)) / safe[:, None]
        root_w = (has * channel_weights).pow(1.0 / self.p)
        diff = torch.linalg.vector_norm(
            root_w[:, None] * (mean_predict - mean_target[:, None]), ord=self.p, dim=-1
        )
        norm = torch.linalg.vector_norm(root_w * mean_target, ord=self.p, dim=-1)
        sample_has = (root_w > 0).any(dim=-1)
        norm = torch.where(sample_has, norm, torch.ones_like(norm))
        ratio = (diff / norm[:, None]).mean(dim=1)
        ratio = torch.where(sample_has, ratio, torch.zeros_like(ratio))
        return ratio.sum() / sample_has.sum().clamp(min=1)
