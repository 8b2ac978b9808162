"""ACE's prescribed ocean: the surface temperature over the ocean comes from data.

After the corrector, ``surface_temperature`` of the prediction is replaced by
the data's value at the next time wherever the ocean fraction (at the next
time) rounds to 1, or blended by the fraction with ``interpolate: true``.

A prescribed value is not a correction: it does not enter
``StepOutput.uncorrected``, so the corrector loss (pre-corrector optimisation
and corrector regularisation) neither trains the network's raw ocean surface
temperature nor penalises the replacement. The replaced value is the data's,
not a constraint on the network's prediction; training the network towards
values that are always overwritten would spend capacity on nothing, and
penalising the replacement would penalise the network for the data. ACE keeps
the prescription out of its corrector diagnostics for the same reason. The
main loss sees the prescribed value (zero error over the ocean), as in ACE.
"""

import dataclasses
from collections.abc import Sequence

import torch

from fme.core.tensors import TensorDict, TensorMapping


@dataclasses.dataclass
class SlabOceanConfig:
    """ACE's slab ocean (``ocean.slab``); not supported here."""

    mixed_layer_depth_name: str
    q_flux_name: str


@dataclasses.dataclass
class OceanConfig:
    """ACE's ``ocean`` block of the step config (atmosphere-only runs).

    Attributes:
        surface_temperature_name: the surface temperature variable; it must be
            prognostic (in ``in_names`` and ``out_names``).
        ocean_fraction_name: the ocean fraction variable (0..1), read from the
            data at the next time.
        interpolate: blend ``fraction * data + (1 - fraction) * prediction``
            instead of replacing where the fraction rounds to 1.
        slab: ACE's slab ocean; not supported here (must be null).
    """

    surface_temperature_name: str
    ocean_fraction_name: str
    interpolate: bool = False
    slab: SlabOceanConfig | None = None

    def __post_init__(self):
        if self.slab is not None:
            raise ValueError(
                "not supported here: ocean.slab (ACE's slab ocean model); remove "
                "it to prescribe the surface temperature from data"
            )

    @property
    def forcing_names(self) -> list[str]:
        """Variables the ocean reads from data at the next time."""
        return list(
            dict.fromkeys([self.ocean_fraction_name, self.surface_temperature_name])
        )

    def build(self, *, in_names: Sequence[str], out_names: Sequence[str]) -> "Ocean":
        """Check the surface temperature is prognostic and build."""
        name = self.surface_temperature_name
        if name not in in_names or name not in out_names:
            raise ValueError(
                f"ocean.surface_temperature_name {name!r} must be in both in_names "
                "and out_names (a prognostic variable) to be prescribed"
            )
        return Ocean(
            surface_temperature_name=name,
            ocean_fraction_name=self.ocean_fraction_name,
            interpolate=self.interpolate,
        )


class Ocean:
    """Prescribes the surface temperature over the ocean from data.

    Args:
        surface_temperature_name: the prescribed variable.
        ocean_fraction_name: the mask variable.
        interpolate: blend by the fraction instead of replacing where it rounds
            to 1.
    """

    def __init__(
        self,
        *,
        surface_temperature_name: str,
        ocean_fraction_name: str,
        interpolate: bool,
    ):
        self.surface_temperature_name = surface_temperature_name
        self.ocean_fraction_name = ocean_fraction_name
        self.interpolate = interpolate

    def __call__(
        self, gen_data: TensorMapping, next_step_data: TensorMapping
    ) -> TensorDict:
        """``{surface_temperature_name: prescribed}``.

        Args:
            gen_data: the (corrected) prediction.
            next_step_data: data at the next time with the fraction and the
                surface temperature.
        """
        name = self.surface_temperature_name
        predicted = gen_data[name]
        data = next_step_data[name]
        fraction = next_step_data[self.ocean_fraction_name]
        if self.interpolate:
            value = fraction * data + (1.0 - fraction) * predicted
        else:
            value = torch.where(torch.round(fraction) == 1, data, predicted)
        return {name: value}
