"""The corrector interface: physical constraints applied after the network."""

import abc
import dataclasses

import torch

from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class CorrectorState:
    """What a corrector carries from one step of a rollout to the next.

    Seeded from the rollout's initial condition (:meth:`CorrectorABC.initial_state`)
    and passed unchanged to every later step, as ACE does.

    Attributes:
        global_dry_air_pressure: ``[batch, 1, 1]`` float64 area-weighted mean
            dry-air pressure (Pa) of the initial condition, which
            ``conserve_dry_air`` pins every step's prediction to; None when no
            operation needs it.
    """

    global_dry_air_pressure: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "CorrectorState":
        """The same state with its tensors on ``device``."""
        reference = self.global_dry_air_pressure
        return CorrectorState(
            global_dry_air_pressure=None if reference is None else reference.to(device)
        )


class CorrectorABC(abc.ABC):
    """Enforces physical constraints on a denormalised prediction.

    A corrector returns only the variables it changed; the step merges them into
    the output and keeps the pre-correction values of exactly those variables
    in ``StepOutput.uncorrected``.
    """

    def initial_state(self, input_data: TensorMapping) -> CorrectorState:
        """The state for a rollout starting from ``input_data`` (default: empty)."""
        return CorrectorState()

    @abc.abstractmethod
    def __call__(
        self,
        input_data: TensorMapping,
        gen_data: TensorMapping,
        forcing_data: TensorMapping,
        state: CorrectorState | None = None,
    ) -> TensorDict:
        """Corrected values of the variables this corrector changes.

        Args:
            input_data: the state at the start of the step, ``{name: [batch, lat, lon]}``
                (prognostic variables and the network's forcing inputs).
            gen_data: the network's denormalised prediction for the next time.
            forcing_data: data at the next time (forcing variables and what the
                step reads from data there, e.g. a prescribed ocean's fields).
            state: the rollout's state from :meth:`initial_state`; None seeds it
                from ``input_data`` (a one-step rollout).

        Returns:
            ``{name: corrected}`` for the variables changed, differentiable in
            ``gen_data``.
        """
