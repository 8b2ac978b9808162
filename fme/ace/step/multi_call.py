"""ACE's ``multi_call`` step: a wrapper around a ``single_module`` step.

``stepper.step: {type: multi_call, config: {wrapped_step: {type: single_module,
config: {...}}, config: null, include_multi_call_in_loss: false}}``. In ACE the
inner ``config`` calls the wrapped step again with a forcing scaled (e.g. CO2
quadrupled) to predict extra diagnostic outputs; that part is not supported
here, so the step predicts exactly what the wrapped step predicts, with its
corrector, ocean and next-step forcing.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from fme.ace.corrector.corrector import CorrectorABC, CorrectorState
from fme.ace.data.batch import DatasetInfo
from fme.ace.step.single_module import SingleModuleStep, SingleModuleStepConfig
from fme.ace.step.step import StepABC, StepOutput
from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.normalizer import StandardNormalizer
from fme.core.tensors import TensorMapping


@dataclasses.dataclass
class MultiCallStepConfig:
    """ACE's ``{type: multi_call, config: {...}}``.

    Attributes:
        wrapped_step: the step to wrap, ``{type: single_module, config: {...}}``.
        config: ACE's multi-call settings (``forcing_name``,
            ``forcing_multipliers``, ``output_names``); not supported here, must
            be null.
        include_multi_call_in_loss: whether the multi-call outputs enter the
            loss; as in ACE it must be false when ``config`` is null.
    """

    wrapped_step: dict[str, Any]
    config: dict[str, Any] | None = None
    include_multi_call_in_loss: bool = True

    def __post_init__(self):
        if self.config is not None:
            raise ValueError(
                "not supported here: multi_call config (ACE's predictions with a "
                "scaled forcing); set stepper.step.config.config to null"
            )
        if self.include_multi_call_in_loss:
            raise ValueError(
                "include_multi_call_in_loss is true but config is null (as in ACE, "
                "this is an error); set include_multi_call_in_loss: false"
            )
        wrapped = self.wrapped_step
        path = "stepper.step.config.wrapped_step"
        if not isinstance(wrapped, dict) or wrapped.get("type") != "single_module":
            raise ConfigError(
                f"{path}: must be {{type: single_module, config: {{...}}}}; allowed "
                "types: ['single_module']"
            )
        unknown = sorted(set(wrapped) - {"type", "config"})
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {unknown}; allowed: type, config"
            )
        self._wrapped = from_dict_strict(
            SingleModuleStepConfig, wrapped.get("config"), path=f"{path}.config"
        )

    @property
    def wrapped_config(self) -> SingleModuleStepConfig:
        """The wrapped step's config."""
        return self._wrapped

    @property
    def all_names(self) -> list[str]:
        """Every variable the step reads or writes."""
        return self._wrapped.all_names

    def build_network_normalizer(self) -> StandardNormalizer:
        """The wrapped step's network normaliser."""
        return self._wrapped.build_network_normalizer()

    def build_loss_normalizer(self) -> StandardNormalizer:
        """The wrapped step's loss normaliser."""
        return self._wrapped.build_loss_normalizer()

    def build(
        self, *, dataset_info: DatasetInfo, normalizer: StandardNormalizer
    ) -> "MultiCallStep":
        """Build the wrapped step and wrap it."""
        return MultiCallStep(
            self._wrapped.build(dataset_info=dataset_info, normalizer=normalizer)
        )


class MultiCallStep(StepABC):
    """Runs the wrapped step; see :mod:`fme.ace.step.multi_call`.

    The network, corrector and normaliser are the wrapped step's.

    Args:
        wrapped: the ``single_module`` step.
    """

    def __init__(self, wrapped: SingleModuleStep):
        super().__init__()
        self.wrapped = wrapped
        self.corrector: CorrectorABC | None = wrapped.corrector
        self.normalizer: StandardNormalizer = wrapped.normalizer

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module registers assigned modules itself, bypassing the property
        # setter; route the network (e.g. its data-parallel wrapper) inside.
        if name == "module":
            self.wrapped.module = value
        else:
            super().__setattr__(name, value)

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped step's network."""
        return self.wrapped.module

    @module.setter
    def module(self, module: torch.nn.Module) -> None:
        self.wrapped.module = module

    def wrap_module(self, fn: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        self.wrapped.wrap_module(fn)

    @property
    def in_names(self) -> list[str]:
        return self.wrapped.in_names

    @property
    def out_names(self) -> list[str]:
        return self.wrapped.out_names

    @property
    def corrector_enabled(self) -> bool:
        return self.wrapped.corrector_enabled

    @property
    def next_step_forcing_names(self) -> list[str]:
        return self.wrapped.next_step_forcing_names

    @property
    def next_step_input_names(self) -> list[str]:
        return self.wrapped.next_step_input_names

    def initial_corrector_state(self, input_data: TensorMapping) -> CorrectorState:
        return self.wrapped.initial_corrector_state(input_data)

    def step(
        self,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        *,
        detach_uncorrected: bool,
        corrector_state: CorrectorState | None = None,
    ) -> StepOutput:
        return self.wrapped.step(
            input_data,
            next_forcing,
            detach_uncorrected=detach_uncorrected,
            corrector_state=corrector_state,
        )
