"""One time step of an emulator and what it returns."""

import abc
import dataclasses
from collections.abc import Callable

from torch import nn

from fme.ace.corrector.corrector import CorrectorABC, CorrectorState
from fme.core.normalizer import StandardNormalizer
from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class StepOutput:
    """Result of one step.

    Attributes:
        output: the corrected, denormalised state at the next time,
            ``{name: [batch, lat, lon]}``.
        uncorrected: for exactly the variables the corrector changed, their
            values before correction; empty when no corrector ran. The
            correction of a variable is ``output[k] - uncorrected[k]``.
        nearest_preimage: set when the corrector can invert itself locally:
            maps a corrected-space target ``{name: [batch, lat, lon]}`` (every
            output variable) to the detached pre-image nearest to this step's
            raw output, ``{name: x~}`` for the corrected variables. None when
            no corrector ran or it has no local inverse.
    """

    output: TensorDict
    uncorrected: TensorDict = dataclasses.field(default_factory=dict)
    nearest_preimage: Callable[[TensorMapping], TensorDict] | None = None

    def corrections(self) -> TensorDict:
        """``output[k] - uncorrected[k]`` for each corrected variable."""
        return {k: self.output[k] - v for k, v in self.uncorrected.items()}


class StepABC(abc.ABC, nn.Module):
    """Advances the state by one time step: network plus optional corrector.

    Attributes:
        module: the network (possibly wrapped, e.g. for data parallelism).
        corrector: the physical corrector, or None.
        normalizer: the network normaliser.
    """

    module: nn.Module
    corrector: CorrectorABC | None
    normalizer: StandardNormalizer

    @abc.abstractmethod
    def wrap_module(self, fn: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the network by ``fn(network)`` (DDP, activation checkpointing)."""

    @property
    @abc.abstractmethod
    def in_names(self) -> list[str]:
        """Variables the step reads (prognostic and forcing)."""

    @property
    @abc.abstractmethod
    def out_names(self) -> list[str]:
        """Variables the step predicts (prognostic and diagnostic)."""

    @property
    def prognostic_names(self) -> list[str]:
        """Variables both read and predicted: the rolled-forward state."""
        return [n for n in self.out_names if n in self.in_names]

    @property
    def forcing_names(self) -> list[str]:
        """Variables read but never predicted: taken from data every step."""
        return [n for n in self.in_names if n not in self.out_names]

    @property
    def next_step_forcing_names(self) -> list[str]:
        """Forcing variables the network reads at the next time instead of now."""
        return []

    @property
    def next_step_input_names(self) -> list[str]:
        """Variables ``step`` needs from data at the next time (``next_forcing``).

        The forcing variables, plus what a step prescribes from data (e.g. a
        prescribed ocean's surface temperature and ocean fraction).
        """
        return self.forcing_names

    def initial_corrector_state(self, input_data: TensorMapping) -> CorrectorState:
        """The corrector state of a rollout whose first input is ``input_data``."""
        return CorrectorState()

    @property
    @abc.abstractmethod
    def corrector_enabled(self) -> bool:
        """Whether a corrector runs in this step."""

    @abc.abstractmethod
    def step(
        self,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        *,
        detach_uncorrected: bool,
        corrector_state: CorrectorState | None = None,
    ) -> StepOutput:
        """Predict the next state.

        Args:
            input_data: ``{name: [batch, lat, lon]}`` for every name in ``in_names``.
            next_forcing: ``next_step_input_names`` at the next time (for the
                corrector and anything prescribed from data).
            detach_uncorrected: detach ``StepOutput.uncorrected`` from the graph.
                Set False when a loss needs gradients through the correction.
            corrector_state: the rollout's corrector state from
                :meth:`initial_corrector_state`; None seeds it from ``input_data``.
        """
