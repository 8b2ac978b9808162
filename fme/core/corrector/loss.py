"""Configuration of corrector-aware training losses.

Two features, usable alone or together (``stepper_training.corrector_loss``):

- ``precorrector_optimization``: the main loss scores the network's output
  *before* the corrector for every variable the corrector changed (except the
  excluded ones), so gradients do not have to pass the corrector's projection.
  Rollout state and returned predictions stay fully corrected. Its ``target``
  is the data (``raw``) or, for scale-invariant physics (SIP) training through
  the corrector, the data's nearest pre-image under the corrector
  (``inverse``).
- ``regularization``: a penalty on the size of the correction
  ``output - uncorrected`` in loss-normalised units, so the network learns to
  need less correction.

Combined, the main loss trains the raw network output while the penalty keeps
it close to the constraint manifold. Both need gradients through
``StepOutput.uncorrected`` (``StepOutputLoss.needs_uncorrected_grad``).

This module is the config side of the corrector loss: it checks every setting
once and builds the runtime, ``fme.core.corrector.step_output_loss``, which
imports no config.
"""

import dataclasses
from collections.abc import Sequence

import torch

from fme.core.corrector.step_output_loss import (
    REGULARIZATION_TERM,
    StepOutputLoss,
    StepOutputLossResult,
    loss_term_names,
)
from fme.core.gridded_ops import LatLonOperations
from fme.core.loss import StepLoss, WeightedMappingLoss
from fme.core.loss_functions import LossConfig
from fme.core.loss_scaling import LossScalingConfig
from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher
from fme.core.normalizer import StandardNormalizer

REGULARIZATION_LOSS_TYPES = ("MSE", "L1", "AreaWeightedMSE")
PRECORRECTOR_TARGETS = ("raw", "inverse")

__all__ = [
    "REGULARIZATION_TERM",
    "CorrectorLossConfig",
    "StepOutputLoss",
    "StepOutputLossResult",
    "build_step_output_loss",
    "loss_term_names",
]


@dataclasses.dataclass
class PreCorrectorOptimizationConfig:
    """Score the pre-corrector prediction in the main loss.

    Attributes:
        exclude_names_and_prefixes: variables whose *corrected* value stays in the
            main loss, matched like everywhere in fme (``name`` matches the 2D
            variable and all its levels, ``name_`` all levels, ``name_<k>`` one
            level). Each entry must match an output variable (checked at build);
            an entry matching no variable the corrector changed is warned about
            once, at the first step with corrections.
        target: what the raw output ``x`` of a corrected, non-excluded
            variable is compared with in the main loss. ``"raw"`` (default):
            the data target ``y*``. ``"inverse"``: SIP through the corrector
            ``C`` (see :mod:`fme.core.sip`): the detached nearest pre-image
            ``x~ = C^-1(y + eta * (y* - y); x)`` with ``y = C(x)``, so the
            main loss is the proxy loss ``||x - stopgrad(x~)||`` in the
            loss-normalised space with the main loss's type and weights. A
            global-mean shift then does not push the network on the mean the
            corrector fixes anyway, nor does the clamp on points it already
            maps to zero. Needs a corrector with local inverses (the
            atmosphere corrector has them) and ``n_ensemble`` 1.
        eta: SIP step size in corrected space, in ``(0, 1]``: the pre-image is
            taken of ``y + eta * (y* - y)``; 1 (default) inverts the data
            target itself. Only for ``target: inverse``.
    """

    exclude_names_and_prefixes: list[str] = dataclasses.field(default_factory=list)
    target: str = "raw"
    eta: float = 1.0

    def __post_init__(self):
        if self.target not in PRECORRECTOR_TARGETS:
            raise ValueError(
                f"precorrector_optimization.target: got {self.target!r}; allowed: "
                f"{list(PRECORRECTOR_TARGETS)}"
            )
        if not 0.0 < self.eta <= 1.0:
            raise ValueError(
                f"precorrector_optimization.eta must be in (0, 1], got {self.eta}"
            )
        if self.eta != 1.0 and self.target != "inverse":
            raise ValueError(
                f"precorrector_optimization.eta only applies to target 'inverse', "
                f"got target {self.target!r} with eta {self.eta}; remove eta or set "
                "target: inverse"
            )


@dataclasses.dataclass
class CorrectorRegularizationConfig:
    """Penalise the corrector's correction against a zero baseline.

    The correction ``output[k] - uncorrected[k]`` of each corrected variable is
    divided by the loss normaliser's std (not shifted by the mean: it is a
    difference) and scored by ``loss`` against zero. The penalty is the mean
    over *corrected* channels only; an all-channel mean would be smaller by
    ``n_corrected / n_all``, so weights tuned that way must be multiplied by
    that factor. Unlike the main loss, the penalty has no per-step decay
    (``sqrt_loss_step_decay_constant`` does not apply); only ``weight`` scales
    it.

    Attributes:
        loss: the pointwise loss of the normalised correction: ``MSE``, ``L1`` or
            ``AreaWeightedMSE``. Ensemble losses, ``NaN`` and ``LpLoss`` (the
            global-mean loss type, a relative norm that divides by the zero
            baseline) are rejected; a global-mean term cannot be configured.
        weight: multiplies the penalty; must be > 0.
        scaling: per-point scalings of the penalty.
    """

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    weight: float = 1.0
    scaling: list[LossScalingConfig] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.loss.type not in REGULARIZATION_LOSS_TYPES:
            raise ValueError(
                f"regularization.loss.type: got {self.loss.type!r}; allowed: "
                f"{list(REGULARIZATION_LOSS_TYPES)} (ensemble, NaN and relative "
                "global-mean losses cannot score a correction against zero)"
            )
        if not self.weight > 0:
            raise ValueError(f"regularization.weight must be > 0, got {self.weight}")


@dataclasses.dataclass
class CorrectorLossConfig:
    """Corrector-aware training; set at least one feature.

    Attributes:
        precorrector_optimization: score the uncorrected prediction in the main
            loss.
        regularization: penalise the size of the correction.
    """

    precorrector_optimization: PreCorrectorOptimizationConfig | None = None
    regularization: CorrectorRegularizationConfig | None = None

    def __post_init__(self):
        if self.precorrector_optimization is None and self.regularization is None:
            raise ValueError(
                "corrector_loss: set precorrector_optimization and/or regularization "
                "(or remove corrector_loss)"
            )

    @property
    def needs_corrector_inverse(self) -> bool:
        """Whether the corrector must provide nearest pre-images."""
        precorrector = self.precorrector_optimization
        return precorrector is not None and precorrector.target == "inverse"

    def build(
        self,
        *,
        step_loss: StepLoss,
        normalizer: StandardNormalizer,
        out_names: Sequence[str],
        n_ensemble: int = 1,
        gridded_ops: LatLonOperations | None = None,
    ) -> StepOutputLoss:
        """The step-output loss wrapping ``step_loss``.

        Args:
            step_loss: the main loss.
            normalizer: the loss normaliser (its stds scale the correction).
            out_names: the output variables.
            n_ensemble: members per sample in the step tensors.
            gridded_ops: grid operations, for area-weighted losses and scalings.

        Raises:
            ValueError: for an exclusion entry matching no output variable, or
                target ``inverse`` with ``n_ensemble`` other than 1.
        """
        if self.needs_corrector_inverse and n_ensemble != 1:
            raise ValueError(
                "precorrector_optimization.target 'inverse' needs n_ensemble = "
                f"1 (one proxy target per prediction), got {n_ensemble}; use "
                "target 'raw' for ensembles"
            )
        exclude = None
        target, eta = "raw", 1.0
        if self.precorrector_optimization is not None:
            target = self.precorrector_optimization.target
            eta = self.precorrector_optimization.eta
            exclude = NameAndPrefixMatcher(
                self.precorrector_optimization.exclude_names_and_prefixes
            )
            unmatched = exclude.unmatched_entries(out_names)
            if unmatched:
                raise ValueError(
                    "precorrector_optimization.exclude_names_and_prefixes: "
                    f"{unmatched} match no output variable; outputs are "
                    f"{list(out_names)}"
                )
        regularization = None
        weight = 1.0
        if self.regularization is not None:
            missing = [n for n in out_names if n not in normalizer.stds]
            if missing:
                raise ValueError(f"the loss normaliser has no statistics for {missing}")
            std_only = StandardNormalizer(
                means={n: torch.tensor(0.0) for n in out_names},
                stds={n: normalizer.stds[n] for n in out_names},
            )
            regularization = WeightedMappingLoss(
                loss=self.regularization.loss.build(gridded_ops=gridded_ops),
                names=out_names,
                normalizer=std_only,
                scalings=[
                    s.build(out_names, gridded_ops) for s in self.regularization.scaling
                ],
            )
            weight = self.regularization.weight
        return StepOutputLoss(
            step_loss=step_loss,
            n_ensemble=n_ensemble,
            precorrector_exclude=exclude,
            regularization=regularization,
            regularization_weight=weight,
            precorrector_target=target,
            inverse_eta=eta,
        )


def build_step_output_loss(
    corrector_loss: CorrectorLossConfig | None,
    *,
    step_loss: StepLoss,
    normalizer: StandardNormalizer,
    out_names: Sequence[str],
    n_ensemble: int,
    gridded_ops: LatLonOperations | None = None,
) -> StepOutputLoss:
    """The step-output loss; a pass-through to ``step_loss`` when not configured.

    Every setting of the loss is checked here, once.

    Raises:
        ValueError: for ``n_ensemble`` < 1, an ensemble loss with one member,
            or a corrector-loss setting that does not fit the outputs.
    """
    if n_ensemble < 1:
        raise ValueError(f"n_ensemble must be >= 1, got {n_ensemble}")
    if step_loss.requires_ensemble and n_ensemble < 2:
        raise ValueError(
            "loss type 'EnsembleLoss' needs n_ensemble >= 2 (and a stochastic "
            f"module), got n_ensemble={n_ensemble}"
        )
    if corrector_loss is None:
        return StepOutputLoss(step_loss=step_loss, n_ensemble=n_ensemble)
    return corrector_loss.build(
        step_loss=step_loss,
        normalizer=normalizer,
        out_names=out_names,
        n_ensemble=n_ensemble,
        gridded_ops=gridded_ops,
    )
