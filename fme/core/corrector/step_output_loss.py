"""The loss of one stepper step, aware of the corrector (the runtime).

``StepOutputLoss`` turns a ``StepOutput`` and its target into a
``StepOutputLossResult``: ensemble unfolding, pre-corrector optimisation
(against the data target or, SIP-style, against its nearest pre-image under
the corrector) and the corrector regularisation. It is built, and its
settings checked, by ``fme.core.corrector.loss`` (the config); this module
imports no config.

Layouts: targets are ``[batch, lat, lon]`` per variable; step tensors are
``[batch * n_ensemble, lat, lon]`` in sample-major order.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from fme.core.loss import (
    GLOBAL_MEAN_TERM,
    MAIN_TERM,
    LossOutput,
    StepLoss,
    WeightedMappingLoss,
)
from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher
from fme.core.tensors import TensorDict, TensorMapping

REGULARIZATION_TERM = "corrector_regularization"


def loss_term_names(*, global_mean: bool, regularization: bool) -> list[str]:
    """The named terms of a total loss, in order: the one list of them.

    Args:
        global_mean: the main loss has a global-mean term.
        regularization: the corrector regularisation is configured.
    """
    names = [MAIN_TERM]
    if global_mean:
        names.append(GLOBAL_MEAN_TERM)
    if regularization:
        names.append(REGULARIZATION_TERM)
    return names


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
        return loss_term_names(
            global_mean=self.step_loss.has_global_mean,
            regularization=self.regularization is not None,
        )

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
