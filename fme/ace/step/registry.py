"""YAML selection of the step type: ``stepper.step: {type, config}``."""

import dataclasses
from typing import Any

from fme.ace.step.multi_call import MultiCallStepConfig
from fme.ace.step.single_module import SingleModuleStepConfig
from fme.core.config_loading import from_dict_strict

StepConfig = SingleModuleStepConfig | MultiCallStepConfig

_STEP_TYPES: dict[str, type[SingleModuleStepConfig] | type[MultiCallStepConfig]] = {
    "single_module": SingleModuleStepConfig,
    "multi_call": MultiCallStepConfig,
}


@dataclasses.dataclass
class StepSelector:
    """Which step to build: ``{type: single_module, config: {...}}``.

    Attributes:
        type: the step type; allowed: ``single_module``, ``multi_call``
            (ACE's wrapper around a ``single_module`` step).
        config: that step type's config.
    """

    type: str
    config: dict[str, Any]

    def __post_init__(self):
        if self.type not in _STEP_TYPES:
            raise ValueError(
                f"stepper.step.type {self.type!r} is unknown; "
                f"allowed: {sorted(_STEP_TYPES)}"
            )
        self.step_config: StepConfig = from_dict_strict(
            _STEP_TYPES[self.type], self.config, path="stepper.step.config"
        )
