"""Losses in the loss-normalised space: step-loss config, mapping and step losses.

Layers, each usable alone:

- a ``LossFunction`` (``fme.core.loss_functions``, configured by
  ``LossConfig``) reduces packed tensors to one loss per channel;
- ``WeightedMappingLoss`` normalises ``{name: tensor}`` dicts with the loss
  normaliser, packs them into channels, masks NaN targets and ``data_mask``,
  applies per-point scalings and per-variable weights, and adds the optional
  global-mean term, returning a ``LossOutput``;
- ``StepLoss`` adds the per-step weight ``1 / sqrt(1 + c * step)``;
- ``StepOutputLoss`` computes the loss of one stepper step from its
  ``StepOutput``: ensemble unfolding, pre-corrector optimisation (against the
  data target or, SIP-style, against its nearest pre-image under the
  corrector) and the corrector regularisation (configured in
  ``fme.core.corrector.loss``).

Layouts: targets are ``[batch, lat, lon]`` per variable. Predictions are either
``[batch, lat, lon]`` (one member) or ``[batch, n_ensemble, lat, lon]``.
Internally predictions are packed to ``[batch, member, channel, lat, lon]``.

``LossConfig`` is re-exported here for ``from fme.core.loss import LossConfig``.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.loss_functions import (
    GLOBAL_MEAN_LOSS_TYPES,
    GlobalMeanLpLoss,
    LossConfig,
    LossFunction,
    kwarg_number,
    validate_loss,
)
from fme.core.loss_scaling import LossScaling, LossScalingConfig
from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher
from fme.core.normalizer import StandardNormalizer
from fme.core.tensors import TensorDict, TensorMapping

MAIN_TERM = "main"
GLOBAL_MEAN_TERM = "global_mean"
REGULARIZATION_TERM = "corrector_regularization"
PRECORRECTOR_TARGETS = ("raw", "inverse")


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
            p = kwarg_number(
                field="loss.global_mean_kwargs",
                key="p",
                value=self.global_mean_kwargs.get("p", 2),
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
        norm_target = self.normalizer.normalize({n: target[n] for n in names})
        norm_predict = self.normalizer.normalize({n: predict[n] for n in names})
        target_dim = norm_target[names[0]].dim()
        members = []
        for n in names:
            x = norm_predict[n]
            if x.dim() == target_dim:
                x = x[:, None]
            elif x.dim() != target_dim + 1:
                raise ValueError(
                    f"loss: prediction of {n!r} has shape {tuple(x.shape)}; expected "
                    f"the target's {tuple(target[n].shape)} or [batch, n_ensemble, "
                    "...]"
                )
            members.append(x)
        packed_target = torch.stack([norm_target[n] for n in names], dim=1)
        return torch.stack(members, dim=2), packed_target

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


# ------------------------------------------------------------ step-output loss


class StepOutputLike(Protocol):
    """What the loss reads from a stepper's ``StepOutput``.

    ``nearest_preimage`` (the corrector's local inverse bound to the step's raw
    output, see ``fme.ace.step.step.StepOutput``) is only read by the
    ``"inverse"`` pre-corrector target, with ``getattr(..., None)``, so objects
    without it still work elsewhere.
    """

    output: TensorDict
    uncorrected: TensorDict
    nearest_preimage: Callable[[TensorMapping], TensorDict] | None


@dataclasses.dataclass
class StepOutputLossResult:
    """The loss of one step, by part.

    Attributes:
        main: the main (step) loss, with its term weights (``"main"``,
            ``"global_mean"``).
        regularization: the corrector penalty times its term weight, or None
            when not configured.
        regularization_output: the penalty per corrected channel before its
            term weight, or None when not configured.
    """

    main: LossOutput
    regularization: torch.Tensor | None = None
    regularization_output: LossOutput | None = None

    def total(self) -> torch.Tensor:
        """``main.total() + regularization`` (just ``main.total()`` without it)."""
        total = self.main.total()
        return total if self.regularization is None else total + self.regularization

    def terms(self) -> dict[str, torch.Tensor]:
        """Weighted terms by name (``main``, ``global_mean``,
        ``corrector_regularization`` as configured); they sum to ``total()``."""
        terms = self.main.terms()
        if self.regularization is not None:
            terms[REGULARIZATION_TERM] = self.regularization
        return terms

    def raw_terms(self) -> dict[str, torch.Tensor]:
        """The same terms reduced but before their term weights (the step
        decay is part of the reduction)."""
        terms = self.main.raw_terms()
        if self.regularization_output is not None:
            terms[REGULARIZATION_TERM] = self.regularization_output.total()
        return terms


class StepOutputLoss:
    """The loss of one stepper step, aware of the corrector.

    Always built: without corrector-loss features it passes the corrected
    output to ``step_loss``. Step tensors are ``[batch * n_ensemble, lat, lon]``
    in sample-major order (index ``b * n_ensemble + e``) and are unfolded to
    ``[batch, n_ensemble, lat, lon]``; targets are ``[batch, lat, lon]``.

    - Pre-corrector optimisation (``precorrector_exclude`` not None): the main
      loss sees, for every variable in ``step_output.uncorrected`` not matched
      by the matcher, the uncorrected value ``x`` instead of the corrected one.
      With ``precorrector_target="raw"`` it is compared with the data target
      ``y*``. With ``"inverse"`` (SIP through the corrector, see
      ``fme.core.sip``) it is compared with the detached nearest pre-image
      ``x~ = C^-1(y + eta * (y* - y); x)`` of the goal, ``y = C(x)`` being the
      corrected output: the loss is then the SIP proxy loss in the
      loss-normalised space with the main loss's weights, and the network is
      not pushed along directions the corrector fixes anyway (a global-mean
      shift, points the clamp maps to zero). Targets of other variables are
      unchanged; NaN data targets stay NaN (masked).
    - Regularisation (``regularization`` not None): the correction
      ``output - uncorrected`` of each corrected variable, divided by the loss
      std, is compared with zero by ``regularization`` (no step decay); the
      channel mean runs over corrected channels only, then is multiplied by
      ``regularization_weight``.

    Both can be combined: the main loss then scores the uncorrected prediction
    while the penalty keeps the corrections small. ``step_output`` is never
    modified.

    Args:
        step_loss: the main loss.
        n_ensemble: members per sample in the step tensors.
        precorrector_exclude: variables whose corrected value stays in the main
            loss; None disables pre-corrector optimisation.
        regularization: loss of the normalised correction against zero
            (its normaliser divides by the loss std only).
        regularization_weight: multiplies the penalty.
        precorrector_target: ``"raw"`` or ``"inverse"`` (see above); only used
            with ``precorrector_exclude``.
        inverse_eta: SIP step size ``eta`` in ``(0, 1]`` for ``"inverse"``;
            1 asks the inverse for the data target itself.
    """

    def __init__(
        self,
        *,
        step_loss: StepLoss,
        n_ensemble: int = 1,
        precorrector_exclude: NameAndPrefixMatcher | None = None,
        regularization: WeightedMappingLoss | None = None,
        regularization_weight: float = 1.0,
        precorrector_target: str = "raw",
        inverse_eta: float = 1.0,
    ):
        if n_ensemble < 1:
            raise ValueError(f"n_ensemble must be >= 1, got {n_ensemble}")
        if precorrector_target not in PRECORRECTOR_TARGETS:
            raise ValueError(
                f"precorrector_target: got {precorrector_target!r}; allowed: "
                f"{list(PRECORRECTOR_TARGETS)}"
            )
        if not 0.0 < inverse_eta <= 1.0:
            raise ValueError(f"inverse_eta must be in (0, 1], got {inverse_eta}")
        if precorrector_target == "inverse":
            if precorrector_exclude is None:
                raise ValueError(
                    "precorrector_target 'inverse' needs pre-corrector optimisation "
                    "(precorrector_exclude must not be None)"
                )
            if n_ensemble != 1:
                raise ValueError(
                    "precorrector_optimization.target 'inverse' needs n_ensemble = "
                    f"1 (one proxy target per prediction), got {n_ensemble}; use "
                    "target 'raw' for ensembles"
                )
        if step_loss.requires_ensemble and n_ensemble < 2:
            raise ValueError(
                "loss type 'EnsembleLoss' needs n_ensemble >= 2 (and a stochastic "
                f"module), got n_ensemble={n_ensemble}"
            )
        self.step_loss = step_loss
        self.n_ensemble = n_ensemble
        self.precorrector_exclude = precorrector_exclude
        self.regularization = regularization
        self.regularization_weight = regularization_weight
        self.precorrector_target = precorrector_target
        self.inverse_eta = inverse_eta
        self._exclusions_checked = False

    @property
    def needs_uncorrected_grad(self) -> bool:
        """Whether the loss differentiates through ``uncorrected``."""
        return self.precorrector_exclude is not None or self.regularization is not None

    @property
    def term_names(self) -> list[str]:
        """Names of the terms ``StepOutputLossResult.terms()`` will hold."""
        names = [MAIN_TERM]
        if self.step_loss.has_global_mean:
            names.append(GLOBAL_MEAN_TERM)
        if self.regularization is not None:
            names.append(REGULARIZATION_TERM)
        return names

    @property
    def base_term_weights(self) -> dict[str, float]:
        """The configured weight of every term: 1 for ``"main"``,
        ``global_mean_weight`` and the regularisation ``weight``.

        Passing these as ``term_weights`` reproduces the default loss.
        """
        weights = {MAIN_TERM: 1.0}
        if self.step_loss.has_global_mean:
            weights[GLOBAL_MEAN_TERM] = self.step_loss.loss.global_mean_weight
        if self.regularization is not None:
            weights[REGULARIZATION_TERM] = self.regularization_weight
        return weights

    def _unfold(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        if self.n_ensemble == 1:
            return x
        if x.shape[0] != batch * self.n_ensemble:
            raise ValueError(
                f"step tensors must have batch * n_ensemble = {batch} * "
                f"{self.n_ensemble} rows, got {x.shape[0]}"
            )
        return x.reshape(batch, self.n_ensemble, *x.shape[1:])

    def _check_exclusions(self, corrected: Sequence[str]) -> None:
        if self._exclusions_checked or not corrected:
            return
        self._exclusions_checked = True
        assert self.precorrector_exclude is not None
        unmatched = self.precorrector_exclude.unmatched_entries(corrected)
        if unmatched:
            warnings.warn(
                "precorrector_optimization.exclude_names_and_prefixes: "
                f"{unmatched} match no variable the corrector changed "
                f"({sorted(corrected)}); check for typos",
                UserWarning,
                stacklevel=4,
            )

    def _main_prediction_and_target(
        self, step_output: StepOutputLike, target_step: TensorMapping
    ) -> tuple[TensorDict, TensorDict]:
        prediction = dict(step_output.output)
        target = dict(target_step)
        if self.precorrector_exclude is None:
            return prediction, target
        self._check_exclusions(list(step_output.uncorrected))
        swapped = [
            name
            for name in step_output.uncorrected
            if not self.precorrector_exclude.matches(name)
        ]
        for name in swapped:
            prediction[name] = step_output.uncorrected[name]
        inverted = [name for name in swapped if name in target_step]
        if self.precorrector_target == "inverse" and inverted:
            target.update(self._preimage_targets(step_output, target_step, inverted))
        return prediction, target

    def _preimage_targets(
        self,
        step_output: StepOutputLike,
        target_step: TensorMapping,
        names: Sequence[str],
    ) -> TensorDict:
        """Detached ``x~ = C^-1(y + eta * (y* - y); x)`` of ``names``."""
        nearest_preimage = getattr(step_output, "nearest_preimage", None)
        if nearest_preimage is None:
            raise ValueError(
                "precorrector_optimization.target 'inverse' needs a corrector that "
                "provides nearest pre-images, but the step output has none; use "
                "target 'raw' or a corrector with local inverses"
            )
        with torch.no_grad():
            goal: TensorDict = {}
            missing: TensorDict = {}
            for name, y_star in target_step.items():
                if name not in step_output.output:
                    continue
                y = step_output.output[name].detach()
                missing[name] = torch.isnan(y_star)
                # A missing data point asks for no change there (goal = y); it
                # stays masked in the loss.
                if self.inverse_eta == 1.0:
                    wanted = y_star
                else:
                    wanted = y + self.inverse_eta * (y_star - y)
                goal[name] = torch.where(missing[name], y, wanted)
            preimage = nearest_preimage(goal)
            result = {}
            for name in names:
                x_tilde = preimage[name].detach()
                result[name] = torch.where(
                    missing[name], torch.full_like(x_tilde, math.nan), x_tilde
                )
        return result

    def _penalty(
        self,
        step_output: StepOutputLike,
        target_step: TensorMapping,
        data_mask: torch.Tensor | None,
    ) -> LossOutput:
        assert self.regularization is not None
        names = self.regularization.names
        batch = target_step[names[0]].shape[0]
        corrections = {
            n: self._unfold(step_output.output[n] - step_output.uncorrected[n], batch)
            for n in names
            if n in step_output.uncorrected
        }
        zeros = torch.zeros_like(target_step[names[0]])
        filler = next(iter(corrections.values()), zeros)
        filler = torch.zeros_like(filler)
        predict = {n: corrections.get(n, filler) for n in names}
        corrected = torch.tensor([n in corrections for n in names], device=zeros.device)
        mask = corrected[None, :].expand(batch, len(names)).to(zeros.dtype)
        if data_mask is not None:
            sample_mask = (data_mask != 0).to(device=zeros.device, dtype=zeros.dtype)
            mask = mask * (
                sample_mask[:, None] if sample_mask.dim() == 1 else sample_mask
            )
        return self.regularization(predict, {n: zeros for n in names}, mask)

    def __call__(
        self,
        step_output: StepOutputLike,
        target_step: TensorMapping,
        step: int,
        data_mask: torch.Tensor | None = None,
        term_weights: Mapping[str, float | torch.Tensor] | None = None,
    ) -> StepOutputLossResult:
        """The loss of one step.

        Args:
            step_output: the stepper's output, ``[batch * n_ensemble, lat, lon]``.
            target_step: ``{name: [batch, lat, lon]}``.
            step: 0-based forward-step index (for the step decay).
            data_mask: optional ``[batch]`` or ``[batch, channel]`` 0/1 mask.
            term_weights: optional *effective* weight of each named term (see
                ``term_names``), applied after reduction. A given weight
                replaces the term's configured weight (``base_term_weights``:
                1 for ``"main"``, ``global_mean_weight``, the regularisation
                ``weight``), so a schedule passes ``base * schedule value``;
                terms not given keep their configured weight.
        """
        term_weights = term_weights or {}
        unknown = sorted(set(term_weights) - set(self.term_names))
        if unknown:
            raise ValueError(
                f"term_weights: unknown term(s) {unknown}; this loss has "
                f"{self.term_names}"
            )
        names = self.step_loss.names
        batch = target_step[names[0]].shape[0]
        prediction, target = self._main_prediction_and_target(step_output, target_step)
        predict = {n: self._unfold(prediction[n], batch) for n in names}
        main = self.step_loss(predict, target, step, data_mask)
        main_weights = {
            k: v for k, v in term_weights.items() if k != REGULARIZATION_TERM
        }
        if main_weights:
            main = main.with_term_weights(main_weights)
        if self.regularization is None:
            return StepOutputLossResult(main=main)
        penalty = self._penalty(step_output, target_step, data_mask)
        weight = term_weights.get(REGULARIZATION_TERM, self.regularization_weight)
        return StepOutputLossResult(
            main=main,
            regularization=weight * penalty.total(),
            regularization_output=penalty,
        )

    def correction_rms(self, step_output: StepOutputLike) -> dict[str, torch.Tensor]:
        """Detached ``sqrt(mean((correction / std)^2))`` per corrected loss variable.

        Uses the loss normaliser's std; computed whether or not the loss
        regularises the correction.
        """
        stds = self.step_loss.normalizer.stds
        result = {}
        for name in self.step_loss.names:
            if name in step_output.uncorrected:
                correction = step_output.output[name] - step_output.uncorrected[name]
                std = stds[name].to(device=correction.device, dtype=correction.dtype)
                result[name] = (correction.detach() / std).pow(2).mean().sqrt()
        return result
