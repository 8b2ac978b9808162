"""The ``single_module`` step: normalise → network → denormalise → corrector."""

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from fme.ace.corrector.corrector import CorrectorABC, CorrectorState
from fme.ace.corrector.inverse import CorrectorInverse
from fme.ace.corrector.registry import CorrectorSelector, corrector_selector_from_yaml
from fme.ace.data.batch import DatasetInfo
from fme.ace.models.registry import ModuleSelector
from fme.ace.step.ocean import Ocean, OceanConfig
from fme.ace.step.step import StepABC, StepOutput
from fme.core.normalizer import NetworkAndLossNormalizationConfig, StandardNormalizer
from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class SingleModuleStepConfig:
    """ACE's ``stepper.step: {type: single_module, config: {...}}``.

    Attributes:
        builder: the network, ``{type: <module name>, config: {...}}``.
        in_names: variables the network reads (prognostic and forcing).
        out_names: variables the network predicts (prognostic and diagnostic).
        normalization: the network's and the loss's normalisation statistics.
        residual_prediction: predict prognostic variables as the input plus
            the network output (in normalised space) instead of directly.
        corrector: optional physical corrector applied after the network, in
            either of ACE's forms: ``{type: atmosphere_corrector, config: {...}}``
            or the atmosphere corrector's config itself (``{conserve_dry_air:
            true, ...}``); see
            :class:`fme.ace.corrector.atmosphere.AtmosphereCorrectorConfig`.
        ocean: ACE's prescribed ocean: after the corrector, the surface
            temperature over the ocean is replaced by the data's value at the
            next time (see :mod:`fme.ace.step.ocean`). A prescribed value is
            not a correction: it is not in ``StepOutput.uncorrected``, so the
            corrector loss neither trains the raw value there nor penalises
            the replacement.
        next_step_forcing_names: forcing variables (in ``in_names``, not in
            ``out_names``) the network reads at the time it predicts instead
            of the current time, as in ACE (e.g. ``DSWRFtoa``, whose value at
            the end of the step is known).
    """

    builder: ModuleSelector
    in_names: list[str]
    out_names: list[str]
    normalization: NetworkAndLossNormalizationConfig
    residual_prediction: bool = False
    corrector: dict[str, Any] | None = None
    ocean: OceanConfig | None = None
    next_step_forcing_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for field in ("in_names", "out_names"):
            names = getattr(self, field)
            if not names:
                raise ValueError(f"stepper.step.config.{field} must not be empty")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"stepper.step.config.{field} repeats {duplicates}")
        for name in self.next_step_forcing_names:
            if name not in self.in_names:
                raise ValueError(
                    f"stepper.step.config.next_step_forcing_names: {name!r} is not "
                    f"in in_names {self.in_names}"
                )
            if name in self.out_names:
                raise ValueError(
                    f"stepper.step.config.next_step_forcing_names: {name!r} is an "
                    "output variable; only forcing variables can be read at the "
                    "next time"
                )
        self._corrector: CorrectorSelector | None = None
        if self.corrector is not None:
            self._corrector = corrector_selector_from_yaml(
                self.corrector, path="stepper.step.config.corrector"
            )
        if self.ocean is not None:
            self.ocean.build(in_names=self.in_names, out_names=self.out_names)

    @property
    def corrector_selector(self) -> CorrectorSelector | None:
        """The configured corrector, or None."""
        return self._corrector

    @property
    def next_step_input_names(self) -> list[str]:
        """Variables the step reads from data at the next time."""
        names = [n for n in self.in_names if n not in self.out_names]
        if self.ocean is not None:
            names += self.ocean.forcing_names
        return list(dict.fromkeys(names))

    @property
    def all_names(self) -> list[str]:
        """Every variable the step reads or writes, inputs first."""
        names = self.in_names + [n for n in self.out_names if n not in self.in_names]
        return list(dict.fromkeys(names + self.next_step_input_names))

    @property
    def prognostic_names(self) -> list[str]:
        """Variables both read and predicted."""
        return [n for n in self.out_names if n in self.in_names]

    def build_network_normalizer(self) -> StandardNormalizer:
        """The network normaliser read from the configured statistics files."""
        return self.normalization.get_network_normalizer(self.all_names)

    def build_loss_normalizer(self) -> StandardNormalizer:
        """The loss normaliser (residual-scaled for prognostic variables if set)."""
        return self.normalization.get_loss_normalizer(
            self.out_names, residual_scaled_names=self.prognostic_names
        )

    def build(
        self, *, dataset_info: DatasetInfo, normalizer: StandardNormalizer
    ) -> "SingleModuleStep":
        """Build the step for a grid, with the network normaliser given."""
        module = self.builder.build(
            n_in_channels=len(self.in_names),
            n_out_channels=len(self.out_names),
            img_shape=dataset_info.img_shape,
        )
        corrector = None
        if self._corrector is not None:
            corrector = self._corrector.build(
                gridded_operations=dataset_info.gridded_operations,
                vertical_coordinate=dataset_info.vertical_coordinate,
                out_names=self.out_names,
                in_names=self.in_names,
                next_step_names=self.next_step_input_names,
                timestep=dataset_info.timestep,
            )
        ocean = None
        if self.ocean is not None:
            ocean = self.ocean.build(in_names=self.in_names, out_names=self.out_names)
            changed = getattr(corrector, "changed_names", [])
            if ocean.surface_temperature_name in changed:
                raise ValueError(
                    "stepper.step.config.ocean.surface_temperature_name "
                    f"{ocean.surface_temperature_name!r} is also changed by the "
                    "corrector; the prescription would overwrite the correction. "
                    "Remove it from the corrector's names"
                )
        return SingleModuleStep(
            module=module,
            in_names=self.in_names,
            out_names=self.out_names,
            normalizer=normalizer,
            residual_prediction=self.residual_prediction,
            corrector=corrector,
            ocean=ocean,
            next_step_forcing_names=self.next_step_forcing_names,
            next_step_input_names=self.next_step_input_names,
        )


_HALF = (torch.float16, torch.bfloat16)


class SingleModuleStep(StepABC):
    """One network call plus optional residual prediction and corrector.

    Args:
        module: maps ``[batch, len(in_names), lat, lon]`` to
            ``[batch, len(out_names), lat, lon]`` in normalised space.
        in_names: input variables in channel order.
        out_names: output variables in channel order.
        normalizer: the network normaliser.
        residual_prediction: add the normalised input to prognostic outputs.
        corrector: applied to the denormalised prediction, or None.
        ocean: prescribes the surface temperature after the corrector, or None.
        next_step_forcing_names: forcing read at the next time (by the rollout).
        next_step_input_names: what ``step`` reads from ``next_forcing``;
            default: the forcing variables.
    """

    def __init__(
        self,
        *,
        module: torch.nn.Module,
        in_names: list[str],
        out_names: list[str],
        normalizer: StandardNormalizer,
        residual_prediction: bool,
        corrector: CorrectorABC | None,
        ocean: Ocean | None = None,
        next_step_forcing_names: list[str] | None = None,
        next_step_input_names: list[str] | None = None,
    ):
        super().__init__()
        self.module = module
        self._in_names = list(in_names)
        self._out_names = list(out_names)
        self.normalizer = normalizer
        self.residual_prediction = residual_prediction
        self.corrector = corrector
        self.ocean = ocean
        self._next_step_forcing_names = list(next_step_forcing_names or [])
        self._next_step_input_names = (
            list(next_step_input_names)
            if next_step_input_names is not None
            else self.forcing_names
        )

    @property
    def next_step_forcing_names(self) -> list[str]:
        return self._next_step_forcing_names

    @property
    def next_step_input_names(self) -> list[str]:
        return self._next_step_input_names

    def initial_corrector_state(self, input_data: TensorMapping) -> CorrectorState:
        if self.corrector is None:
            return CorrectorState()
        return self.corrector.initial_state(input_data)

    @property
    def in_names(self) -> list[str]:
        return self._in_names

    @property
    def out_names(self) -> list[str]:
        return self._out_names

    @property
    def corrector_enabled(self) -> bool:
        return self.corrector is not None

    def wrap_module(self, fn: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        self.module = fn(self.module)

    def step(
        self,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        *,
        detach_uncorrected: bool,
        corrector_state: CorrectorState | None = None,
    ) -> StepOutput:
        missing = [n for n in self._in_names if n not in input_data]
        if missing:
            raise ValueError(f"step input lacks variables {missing}")
        in_names = self._in_names
        packed = self.normalizer.normalize_packed(
            torch.stack([input_data[n] for n in in_names], dim=1), in_names
        )
        packed_out = self.module(packed)
        # Under mixed precision only the network runs in low precision: the
        # residual, denormalisation and corrector run in float32, so the
        # corrector's conservation holds to float32 precision.
        with torch.autocast(device_type=packed_out.device.type, enabled=False):
            return self._finish(
                packed_out.float() if packed_out.dtype in _HALF else packed_out,
                packed_in=packed,
                input_data=input_data,
                next_forcing=next_forcing,
                detach_uncorrected=detach_uncorrected,
                corrector_state=corrector_state,
            )

    def _finish(
        self,
        packed_out: torch.Tensor,
        *,
        packed_in: torch.Tensor,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        detach_uncorrected: bool,
        corrector_state: CorrectorState | None,
    ) -> StepOutput:
        """Residual, denormalisation and corrector of the network's output
        (``packed_in``: the normalised network input)."""
        # Variables are split off a packed tensor by one unbind, not a select
        # per variable: its backward stacks the variables' gradients once
        # instead of zero-filling a full-size gradient per variable.
        if self.residual_prediction:
            normalized_in = dict(
                zip(self._in_names, packed_in.unbind(dim=1), strict=True)
            )
            normalized_out: TensorDict = dict(
                zip(self._out_names, packed_out.unbind(dim=1), strict=True)
            )
            for name in self.prognostic_names:
                normalized_out[name] = normalized_out[name] + normalized_in[name]
            output = self.normalizer.denormalize(normalized_out)
        else:
            packed_out = self.normalizer.denormalize_packed(packed_out, self._out_names)
            output = dict(zip(self._out_names, packed_out.unbind(dim=1), strict=True))
        if self.corrector is None:
            return StepOutput(output=self._prescribe(output, next_forcing))
        if corrector_state is None:
            corrector_state = self.corrector.initial_state(input_data)
        corrected = self.corrector(input_data, output, next_forcing, corrector_state)
        uncorrected = {
            k: output[k].detach() if detach_uncorrected else output[k]
            for k in corrected
        }
        return StepOutput(
            output=self._prescribe({**output, **corrected}, next_forcing),
            uncorrected=uncorrected,
            nearest_preimage=self._nearest_preimage_fn(
                output, input_data, next_forcing, corrector_state
            ),
        )

    def _prescribe(self, output: TensorDict, next_forcing: TensorMapping) -> TensorDict:
        """The prescribed ocean's surface temperature, after the corrector."""
        if self.ocean is None:
            return output
        return {**output, **self.ocean(output, next_forcing)}

    def _nearest_preimage_fn(
        self,
        raw: TensorMapping,
        input_data: TensorMapping,
        next_forcing: TensorMapping,
        corrector_state: CorrectorState,
    ) -> Callable[[TensorMapping], TensorDict] | None:
        """The corrector's local inverse bound to this step's raw output.

        The bound tensors are detached, so the pre-image never carries a graph
        (SIP training treats it as a constant proxy target).
        """
        corrector = self.corrector
        if not isinstance(corrector, CorrectorInverse):
            return None
        raw = {k: v.detach() for k, v in raw.items()}
        input_data = {k: v.detach() for k, v in input_data.items()}
        next_forcing = {k: v.detach() for k, v in next_forcing.items()}

        def nearest_preimage(target: TensorMapping) -> TensorDict:
            with torch.no_grad():
                preimage = corrector.nearest_preimage(
                    raw,
                    target,
                    input_data,
                    forcing_data=next_forcing,
                    state=corrector_state,
                )
            return {k: v.detach() for k, v in preimage.items()}

        return nearest_preimage
