"""Losses in the loss-normalised space: step-loss config, mapping and step losses.

Layers, each usable alone:

- a ``LossFunction`` (``fme.core.loss_functions``, configured by
  ``LossConfig``) reduces packed tensors to one loss per channel;
- ``WeightedMappingLoss`` normalises ``{name: tensor}`` dicts with the loss
  normaliser, packs them into channels, masks NaN targets and ``data_mask``,
  applies per-point scalings and per-variable weights, and adds the optional
  global-mean term, returning a ``LossOutput``;
- ``StepLoss`` adds the per-step weight ``1 / sqrt(1 + c * step)``.

The loss of a whole stepper step, corrector-aware, is
``fme.core.corrector.step_output_loss.StepOutputLoss`` (configured in
``fme.core.corrector.loss``).

Layouts: targets are ``[batch, lat, lon]`` per variable. Predictions are either
``[batch, lat, lon]`` (one member) or ``[batch, n_ensemble, lat, lon]``.
Internally predictions are packed to ``[batch, member, channel, lat, lon]``.

``LossConfig`` is re-exported here for ``from fme.core.loss import LossConfig``.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.loss_functions import (
    GLOBAL_MEAN_LOSS_TYPES,
    GlobalMeanLpLoss,
    LossConfig,
    LossFunction,
    validate_loss,
)
from fme.core.loss_scaling import LossScaling, LossScalingConfig
from fme.core.normalizer import StandardNormalizer
from fme.core.number_check import check_number
from fme.core.tensors import TensorMapping

MAIN_TERM = "main"
GLOBAL_MEAN_TERM = "global_mean"


@dataclasses.dataclass
class StepLossConfig:
    """ACE's ``stepper_training.loss`` block plus per-point scalings.

    Attributes:
        type: loss type, see ``LossConfig.type``.
        kwargs: keyword arguments of the loss type.
        global_mean_type: if set (only ``LpLoss``), add a loss on the area-weighted
            global means: the relative Lp norm over the vector of per-channel
            global means, per sample and member. Needs grid area weights.
        global_mean_kwargs: keyword arguments of the global-mean loss.
        global_mean_weight: multiplies the global-mean term. Must be >= 0.
        weights: per-variable multipliers of the channel losses (default 1);
            names must be output variables. Must be >= 0.
        sqrt_loss_step_decay_constant: ``c >= 0``; forward step ``step``
            (0-based) is weighted ``1 / sqrt(1 + c * step)``; 0 weighs all
            steps equally.
        scaling: per-point scalings of the main term (not the global-mean term),
            multiplied together.
    """

    type: str = "MSE"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    global_mean_type: str | None = None
    global_mean_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    global_mean_weight: float = 1.0
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    sqrt_loss_step_decay_constant: float = 0.0
    scaling: list[LossScalingConfig] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        validate_loss(field="loss", type_=self.type, kwargs=self.kwargs)
        if self.global_mean_type is not None:
            if self.global_mean_type not in GLOBAL_MEAN_LOSS_TYPES:
                raise ValueError(
                    f"loss.global_mean_type: got {self.global_mean_type!r}; allowed: "
                    f"{list(GLOBAL_MEAN_LOSS_TYPES)} or null"
                )
            validate_loss(
                field="loss.global_mean",
                type_=self.global_mean_type,
                kwargs=self.global_mean_kwargs,
            )
        elif self.global_mean_kwargs:
            raise ValueError(
                "loss.global_mean_kwargs is set but loss.global_mean_type is null"
            )
        if not self.global_mean_weight >= 0:
            raise ValueError(
                f"loss.global_mean_weight must be >= 0, got {self.global_mean_weight}"
            )
        bad = {k: v for k, v in self.weights.items() if not v >= 0}
        if bad:
            raise ValueError(f"loss.weights must be >= 0, got {bad}")
        if not self.sqrt_loss_step_decay_constant >= 0:
            raise ValueError(
                "loss.sqrt_loss_step_decay_constant must be >= 0, got "
                f"{self.sqrt_loss_step_decay_constant}"
            )

    @property
    def requires_ensemble(self) -> bool:
        """Whether the loss needs ``n_ensemble >= 2`` (a stochastic module)."""
        return self.type == "EnsembleLoss"

    def build(
        self,
        *,
        out_names: Sequence[str],
        normalizer: StandardNormalizer,
        gridded_ops: LatLonOperations | None = None,
    ) -> "StepLoss":
        """The step loss over ``out_names`` in the space of the loss ``normalizer``.

        Raises:
            ValueError: for weights of unknown variables, or a loss type, global
                mean or scaling that needs ``gridded_ops`` when it is None.
        """
        unknown = sorted(set(self.weights) - set(out_names))
        if unknown:
            raise ValueError(
                f"loss.weights: {unknown} are not output variables; allowed: "
                f"{list(out_names)}"
            )
        global_mean = None
        if self.global_mean_type is not None:
            if gridded_ops is None:
                raise ValueError(
                    "loss.global_mean_type needs grid area weights, but no gridded "
                    "operations were given to build()"
                )
            p = check_number(
                self.global_mean_kwargs.get("p", 2), path="loss.global_mean_kwargs.p"
            )
            global_mean = GlobalMeanLpLoss(gridded_ops, p=p)
        loss = WeightedMappingLoss(
            loss=LossConfig(self.type, self.kwargs).build(gridded_ops=gridded_ops),
            names=out_names,
            normalizer=normalizer,
            weights=self.weights,
            scalings=[s.build(out_names, gridded_ops) for s in self.scaling],
            global_mean=global_mean,
            global_mean_weight=self.global_mean_weight,
        )
        return StepLoss(
            loss=loss, sqrt_loss_step_decay_constant=self.sqrt_loss_step_decay_constant
        )


# ------------------------------------------------------------------ loss output


@dataclasses.dataclass
class LossOutput:
    """A loss reduced to one value per channel, plus optional scalar terms.

    Each named term (``"main"``, the channel mean, and every extra term) has a
    raw value (reduced, before its term weight) and a term weight; ``terms()``
    holds their products, which sum to ``total()``.

    Attributes:
        names: channel (variable) names.
        channel_losses: ``[C]`` losses with per-variable and step weights
            applied, before the ``"main"`` term weight; 0 for inactive channels.
        active: ``[C]`` bool, channels with at least one valid point.
        extra_terms: further scalar terms by name (e.g. ``"global_mean"``),
            raw (before their term weight).
        term_weights: weight of each term by name; missing terms weigh 1.
    """

    names: list[str]
    channel_losses: torch.Tensor
    active: torch.Tensor
    extra_terms: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    term_weights: dict[str, float | torch.Tensor] = dataclasses.field(
        default_factory=dict
    )

    def _weight(self, name: str) -> float | torch.Tensor:
        return self.term_weights.get(name, 1.0)

    def channel_mean(self) -> torch.Tensor:
        """Raw ``"main"`` term: mean of ``channel_losses`` over active channels
        (0 if none is active)."""
        zeros = torch.zeros_like(self.channel_losses)
        total = torch.where(self.active, self.channel_losses, zeros).sum()
        return total / self.active.sum().clamp(min=1)

    def raw_terms(self) -> dict[str, torch.Tensor]:
        """Every term reduced but before its term weight."""
        return {MAIN_TERM: self.channel_mean(), **self.extra_terms}

    def terms(self) -> dict[str, torch.Tensor]:
        """Every term times its term weight; they sum to ``total()``."""
        return {k: v * self._weight(k) for k, v in self.raw_terms().items()}

    def total(self) -> torch.Tensor:
        """The scalar loss: the sum of the weighted terms."""
        terms = list(self.terms().values())
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def get_channel_losses(self) -> dict[str, torch.Tensor]:
        """Loss per active channel by variable name, times the ``"main"`` weight."""
        active = self.active.tolist()
        weight = self._weight(MAIN_TERM)
        return {
            n: self.channel_losses[i] * weight
            for i, n in enumerate(self.names)
            if active[i]
        }

    def with_term_weights(
        self, weights: Mapping[str, float | torch.Tensor]
    ) -> "LossOutput":
        """A copy whose term weights are replaced by ``weights`` where given."""
        return dataclasses.replace(self, term_weights={**self.term_weights, **weights})

    def scaled(self, factor: float | torch.Tensor) -> "LossOutput":
        """A copy with every raw term (and channel loss) multiplied by ``factor``."""
        return dataclasses.replace(
            self,
            channel_losses=self.channel_losses * factor,
            extra_terms={k: v * factor for k, v in self.extra_terms.items()},
        )


# --------------------------------------------------------------- mapping losses


class WeightedMappingLoss:
    """A loss over ``{name: tensor}`` dicts in loss-normalised space.

    Predictions and targets are normalised, packed into channels in the order
    of ``names``, compared with ``loss``; NaN targets and points excluded by
    ``data_mask`` do not count (means divide by the number of valid points), a
    channel without valid points is inactive. Channel losses are multiplied by
    ``weights`` before the mean over active channels.

    Args:
        loss: reduces packed tensors to per-channel losses.
        names: the variables, in packing order.
        normalizer: the loss normaliser; must know every name.
        weights: per-variable multipliers, default 1.
        scalings: per-point scalings of ``loss`` (its integrand).
        global_mean: optional global-mean loss, a term named ``"global_mean"``.
        global_mean_weight: multiplies the global-mean term.
    """

    def __init__(
        self,
        *,
        loss: LossFunction,
        names: Sequence[str],
        normalizer: StandardNormalizer,
        weights: Mapping[str, float] | None = None,
        scalings: Sequence[LossScaling] = (),
        global_mean: GlobalMeanLpLoss | None = None,
        global_mean_weight: float = 1.0,
    ):
        if not names:
            raise ValueError("a loss needs at least one variable name")
        missing = [n for n in names if n not in normalizer.means]
        if missing:
            raise ValueError(f"the loss normaliser has no statistics for {missing}")
        if scalings and not loss.supports_scaling:
            raise ValueError(
                f"loss scaling is not supported by {type(loss).__name__} with these "
                "settings (the energy score is not pointwise); remove 'scaling' or "
                "the energy score"
            )
        self.loss = loss
        self.names = list(names)
        self.normalizer = normalizer
        weights = weights or {}
        self.channel_weights = torch.tensor([float(weights.get(n, 1.0)) for n in names])
        self.scalings = list(scalings)
        self.global_mean = global_mean
        self.global_mean_weight = global_mean_weight

    def _pack(
        self, predict: TensorMapping, target: TensorMapping
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for role, tensors in (("prediction", predict), ("target", target)):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"loss: {role} has no data for {missing}")
        names = self.names
        target_dim = target[names[0]].dim()
        members = []
        for n in names:
            x = predict[n]
            if x.dim() == target_dim:
                x = x[:, None]
            elif x.dim() != target_dim + 1:
                raise ValueError(
                    f"loss: prediction of {n!r} has shape {tuple(x.shape)}; expected "
                    f"the target's {tuple(target[n].shape)} or [batch, n_ensemble, "
                    "...]"
                )
            members.append(x)
        normalize = self.normalizer.normalize_packed
        packed_target = normalize(torch.stack([target[n] for n in names], 1), names)
        packed_predict = normalize(torch.stack(members, dim=2), names, dim=2)
        return packed_predict, packed_target

    @staticmethod
    def _valid(target: torch.Tensor, data_mask: torch.Tensor | None) -> torch.Tensor:
        valid = (~torch.isnan(target)).to(target.dtype)
        if data_mask is None:
            return valid
        batch, n_channels = target.shape[:2]
        if data_mask.shape not in ((batch,), (batch, n_channels)):
            raise ValueError(
                f"data_mask must be [batch] or [batch, channel] = [{batch}] or "
                f"[{batch}, {n_channels}], got {tuple(data_mask.shape)}"
            )
        mask = (data_mask != 0).to(device=target.device, dtype=target.dtype)
        mask = mask[:, None] if mask.dim() == 1 else mask
        return valid * mask[:, :, None, None]

    def __call__(
        self,
        predict: TensorMapping,
        target: TensorMapping,
        data_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """The loss of ``predict`` against ``target``.

        Args:
            predict: ``{name: [batch, lat, lon]}`` or ``[batch, n_ensemble, ...]``.
            target: ``{name: [batch, lat, lon]}``, NaN where there is no data.
            data_mask: optional ``[batch]`` or ``[batch, channel]`` 0/1 tensor of
                the samples (and channels, in ``names`` order) that count.
        """
        packed_predict, packed_target = self._pack(predict, target)
        valid = self._valid(packed_target, data_mask)
        filled = torch.nan_to_num(packed_target, nan=0.0)
        losses, active = self.loss(packed_predict, filled, valid, self.scalings)
        weights = self.channel_weights.to(device=losses.device, dtype=losses.dtype)
        extra: dict[str, torch.Tensor] = {}
        term_weights: dict[str, float | torch.Tensor] = {}
        if self.global_mean is not None:
            term = self.global_mean(packed_predict, filled, valid, weights)
            extra[GLOBAL_MEAN_TERM] = term
            term_weights[GLOBAL_MEAN_TERM] = self.global_mean_weight
        return LossOutput(self.names, losses * weights, active, extra, term_weights)


class StepLoss:
    """A ``WeightedMappingLoss`` weighted by forward-step index.

    Step ``step`` (0-based) is weighted ``1 / sqrt(1 + c * step)`` with
    ``c = sqrt_loss_step_decay_constant``; ``c = 0`` weighs every step 1.

    Args:
        loss: the loss of one step.
        sqrt_loss_step_decay_constant: ``c >= 0``.
    """

    def __init__(
        self, *, loss: WeightedMappingLoss, sqrt_loss_step_decay_constant: float = 0.0
    ):
        self.loss = loss
        self.sqrt_loss_step_decay_constant = sqrt_loss_step_decay_constant

    @property
    def names(self) -> list[str]:
        """The variables the loss compares."""
        return self.loss.names

    @property
    def normalizer(self) -> StandardNormalizer:
        """The loss normaliser."""
        return self.loss.normalizer

    @property
    def requires_ensemble(self) -> bool:
        """Whether the loss needs ``n_ensemble >= 2``."""
        return self.loss.loss.requires_ensemble

    @property
    def has_global_mean(self) -> bool:
        """Whether the output carries a ``"global_mean"`` term."""
        return self.loss.global_mean is not None

    def step_weight(self, step: int) -> float:
        """``1 / sqrt(1 + c * step)``."""
        return 1.0 / math.sqrt(1.0 + self.sqrt_loss_step_decay_constant * step)

    def __call__(
        self,
        predict: TensorMapping,
        target: TensorMapping,
        step: int,
        data_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """The weighted loss of forward step ``step``; see ``WeightedMappingLoss``."""
        return self.loss(predict, target, data_mask).scaled(self.step_weight(step))
