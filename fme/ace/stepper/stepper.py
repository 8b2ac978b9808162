"""The stepper: a step rolled forward over many times, with its checkpoint state."""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from fme.ace.corrector.corrector import CorrectorABC, CorrectorState
from fme.ace.data.batch import DatasetInfo
from fme.ace.data.dataset_info_state import (
    dataset_info_from_state,
    dataset_info_to_state,
)
from fme.ace.step.registry import StepSelector
from fme.ace.step.step import StepABC, StepOutput

# Registers ACE's checkpoint format with fme.core.checkpoint.load_checkpoint.
from fme.ace.stepper import ace_checkpoint  # noqa: F401
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict, to_dict
from fme.core.lora import load_state_with_adapters, plain_state_dict
from fme.core.normalizer import StandardNormalizer
from fme.core.parallelize import unwrap_network
from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class StepperConfig:
    """ACE's ``stepper`` section.

    Give either ``step``, or ``checkpoint_path`` (ACE's ``CheckpointStepperConfig``)
    to take the stepper config, statistics included, from a training
    checkpoint, ours or ACE's. As in ACE, ``checkpoint_path`` does not load
    weights: use ``stepper_training.parameter_init.weights_path`` for that.
    The checkpoint is read when the config is loaded, and the config then
    holds its ``step``.

    Attributes:
        step: the step to roll forward, ``{type: single_module, config: {...}}``.
        checkpoint_path: a training checkpoint whose stepper config to use.
    """

    step: StepSelector | None = None
    checkpoint_path: str | None = None

    def __post_init__(self):
        if (self.step is None) == (self.checkpoint_path is None):
            raise ValueError(
                "stepper: give exactly one of 'step' and 'checkpoint_path', got "
                f"{'both' if self.step is not None else 'neither'}"
            )
        if self.checkpoint_path is not None:
            path = self.checkpoint_path
            state = load_checkpoint(path)
            try:
                stepper_config = state["trainable"]["stepper"]["config"]
            except (KeyError, TypeError):
                raise ValueError(
                    f"stepper.checkpoint_path {path!r} holds no stepper config"
                ) from None
            loaded = from_dict_strict(
                StepperConfig, stepper_config, path=f"stepper (from {path})"
            )
            self.step = loaded.step
            self.checkpoint_path = None

    @property
    def selector(self) -> StepSelector:
        """The step selector (set after loading, also with ``checkpoint_path``)."""
        assert self.step is not None
        return self.step

    def build(self, *, dataset_info: DatasetInfo) -> "Stepper":
        """A new stepper with statistics read from the configured files."""
        step_config = self.selector.step_config
        return self.build_with_normalizers(
            dataset_info=dataset_info,
            normalizer=step_config.build_network_normalizer(),
            loss_normalizer=step_config.build_loss_normalizer(),
        )

    def build_with_normalizers(
        self,
        *,
        dataset_info: DatasetInfo,
        normalizer: StandardNormalizer,
        loss_normalizer: StandardNormalizer,
    ) -> "Stepper":
        """A new stepper with given statistics (e.g. from a checkpoint)."""
        step = self.selector.step_config.build(
            dataset_info=dataset_info, normalizer=normalizer
        )
        return Stepper(
            config=self,
            step=step,
            dataset_info=dataset_info,
            loss_normalizer=loss_normalizer,
        )


class Stepper:
    """Rolls a step forward in time.

    Args:
        config: the config the stepper was built from (saved in checkpoints).
        step: the one-step model.
        dataset_info: grid and metadata of the training data.
        loss_normalizer: the statistics losses are computed with.
    """

    def __init__(
        self,
        *,
        config: StepperConfig,
        step: StepABC,
        dataset_info: DatasetInfo,
        loss_normalizer: StandardNormalizer,
    ):
        self.config = config
        self.step = step
        self.dataset_info = dataset_info
        self.loss_normalizer = loss_normalizer

    @property
    def in_names(self) -> list[str]:
        """Variables the step reads."""
        return self.step.in_names

    @property
    def out_names(self) -> list[str]:
        """Variables the step predicts."""
        return self.step.out_names

    @property
    def prognostic_names(self) -> list[str]:
        """Variables rolled forward."""
        return self.step.prognostic_names

    @property
    def forcing_names(self) -> list[str]:
        """Variables read from data at every step (what ``rollout``'s ``forcing`` holds).

        The network's forcing inputs and what the step reads at the next time
        (e.g. a prescribed ocean's surface temperature and ocean fraction).
        """
        return list(
            dict.fromkeys(self.step.forcing_names + self.step.next_step_input_names)
        )

    @property
    def all_names(self) -> list[str]:
        """Variables a data window must hold (also what is read at the next time)."""
        names = self.in_names + [n for n in self.out_names if n not in self.in_names]
        return list(dict.fromkeys(names + self.forcing_names))

    @property
    def normalizer(self) -> StandardNormalizer:
        """The network's normalisation statistics (ACE's ``stepper.normalizer``)."""
        return self.step.normalizer

    @property
    def module(self) -> torch.nn.Module:
        """The network (possibly wrapped for data parallelism)."""
        return self.step.module

    @property
    def corrector(self) -> CorrectorABC | None:
        """The step's physical corrector, or None."""
        return self.step.corrector

    def wrap_module(self, fn: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Replace the network by ``fn(network)``, e.g. a data-parallel wrapper."""
        self.step.wrap_module(fn)

    def to(self, device: torch.device) -> "Stepper":
        """Move the network to ``device``."""
        self.step.to(device)
        return self

    def rollout(
        self,
        *,
        initial_condition: TensorMapping,
        forcing: TensorMapping,
        n_forward_steps: int,
        detach_uncorrected: bool,
        detach_between_steps: bool = False,
        checkpoint_after_n_steps: int | None = None,
        corrector_state: CorrectorState | None = None,
    ) -> Iterator[StepOutput]:
        """Yield one ``StepOutput`` per forward step.

        Args:
            initial_condition: ``{name: [batch, lat, lon]}`` for the prognostic
                variables at time 0.
            forcing: ``{name: [batch, time, lat, lon]}`` for the forcing
                variables with ``time >= n_forward_steps + 1``.
            n_forward_steps: number of steps to take.
            detach_uncorrected: detach pre-correction values in the outputs.
            detach_between_steps: detach the state fed to the next step (the
                memory saver of gradient accumulation).
            checkpoint_after_n_steps: recompute activations in backward for
                steps with index ``>= n`` (non-reentrant activation checkpointing).
            corrector_state: the corrector state of the rollout this one
                continues (e.g. the next chunk of a long inference); None
                seeds it from this rollout's first input, its initial condition.
        """
        state: TensorDict = {n: initial_condition[n] for n in self.prognostic_names}
        next_step_forcing = set(self.step.next_step_forcing_names)
        for i in range(n_forward_steps):
            input_data = {
                **state,
                **{
                    n: forcing[n][:, i + 1 if n in next_step_forcing else i]
                    for n in self.step.forcing_names
                },
            }
            next_forcing = {
                n: forcing[n][:, i + 1] for n in self.step.next_step_input_names
            }
            if corrector_state is None:
                # Seeded once from the initial condition and carried through
                # the rollout (ACE's dry-air reference).
                corrector_state = self.step.initial_corrector_state(input_data)
            if checkpoint_after_n_steps is not None and i >= checkpoint_after_n_steps:
                out = checkpoint(
                    self._step,
                    input_data,
                    next_forcing,
                    detach_uncorrected,
                    corrector_state,
                    use_reentrant=False,
                )
            else:
                out = self._step(
                    input_data, next_forcing, detach_uncorrected, corrector_state
                )
            yield out
            state = {n: out.output[n] for n in self.prognostic_names}
            if detach_between_steps:
                state = {k: v.detach() for k, v in state.items()}

    def _step(
        self,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        detach_uncorrected: bool,
        corrector_state: CorrectorState,
    ) -> StepOutput:
        return self.step.step(
            input_data,
            next_forcing,
            detach_uncorrected=detach_uncorrected,
            corrector_state=corrector_state,
        )

    def initial_corrector_state(
        self, initial_condition: TensorMapping, forcing: TensorMapping
    ) -> CorrectorState:
        """The corrector state ``rollout`` seeds from its first input.

        Args:
            initial_condition: ``{name: [batch, lat, lon]}`` prognostic state.
            forcing: ``{name: [batch, time, lat, lon]}`` as given to ``rollout``.
        """
        next_step_forcing = set(self.step.next_step_forcing_names)
        input_data = {
            **{n: initial_condition[n] for n in self.prognostic_names},
            **{
                n: forcing[n][:, 1 if n in next_step_forcing else 0]
                for n in self.step.forcing_names
            },
        }
        return self.step.initial_corrector_state(input_data)

    @property
    def base_module(self) -> torch.nn.Module:
        """The network without any data-parallel or compile wrapper."""
        return unwrap_network(self.step.module)

    def load_weights(
        self,
        state: dict[str, Any],
        *,
        adapters: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Load network weights from ``get_state()`` output.

        Args:
            state: ``get_state()`` output.
            adapters: LoRA base weights and adapters (``fme.core.lora.
                adapter_state_dict``) when the network carries adapters.
        """
        load_state_with_adapters(self.base_module, state["module"], adapters)

    def get_state(self) -> dict[str, Any]:
        """Plain-data state: config, weights, normalisation, grid.

        LoRA adapters, if any, are merged into the saved weights, so the
        state loads into the network as configured, without LoRA.
        """
        return {
            "config": to_dict(self.config),
            "module": plain_state_dict(self.base_module),
            "normalizer": self.step.normalizer.get_state(),
            "loss_normalizer": self.loss_normalizer.get_state(),
            "dataset_info": dataset_info_to_state(self.dataset_info),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Stepper":
        """Rebuild a stepper from ``get_state()`` without reading statistics files."""
        config = from_dict_strict(StepperConfig, state["config"], path="stepper")
        stepper = config.build_with_normalizers(
            dataset_info=dataset_info_from_state(state["dataset_info"]),
            normalizer=StandardNormalizer.from_state(state["normalizer"]),
            loss_normalizer=StandardNormalizer.from_state(state["loss_normalizer"]),
        )
        stepper.load_weights(state)
        return stepper
