"""The corrector interface: physical constraints applied after the network."""

import abc

from fme.core.tensors import TensorDict, TensorMapping


class CorrectorABC(abc.ABC):
    """Enforces physical constraints on a denormalised prediction.

    A corrector returns only the variables it changed; the step merges them into
    the output and keeps the pre-correction values of exactly those variables
    in ``StepOutput.uncorrected``.
    """

    @abc.abstractmethod
    def __call__(
        self,
        input_data: TensorMapping,
        gen_data: TensorMapping,
        forcing_data: TensorMapping,
    ) -> TensorDict:
        """Corrected values of the variables this corrector changes.

        Args:
            input_data: the state at the start of the step, ``{name: [batch, lat, lon]}``.
            gen_data: the network's denormalised prediction for the next time.
            forcing_data: forcing variables at the next time.

        Returns:
            ``{name: corrected}`` for the variables changed, differentiable in
            ``gen_data``.
        """
