"""Which data variable holds each physical quantity the corrector reads.

ACE accepts several spellings of the same quantity (FV3GFS/SHiELD names such
as ``PRESsfc`` and E3SM names such as ``PS``); the first spelling present in
the data is used, as in ACE. Layered quantities are prefixes followed by the
level index (``specific_total_water_0`` at the model top).
"""

from collections.abc import Collection, Sequence

# quantity -> accepted names, first match wins (ACE's order)
SURFACE_NAMES: dict[str, tuple[str, ...]] = {
    "surface_pressure": ("PRESsfc", "PS"),
    "surface_height": ("HGTsfc",),
    "surface_geopotential": ("PHIS",),
    "tendency_of_total_water_path_due_to_advection": (
        "tendency_of_total_water_path_due_to_advection",
        "DTENDTTW",
    ),
    "latent_heat_flux": ("LHTFLsfc", "LHFLX"),
    "sensible_heat_flux": ("SHTFLsfc", "SHFLX"),
    "precipitation_rate": ("PRATEsfc", "surface_precipitation_rate", "PRECT"),
    "sfc_down_sw_radiative_flux": ("DSWRFsfc", "FSDS"),
    "sfc_up_sw_radiative_flux": ("USWRFsfc", "surface_upward_shortwave_flux", "FSUS"),
    "sfc_down_lw_radiative_flux": ("DLWRFsfc", "FLDS"),
    "sfc_up_lw_radiative_flux": ("ULWRFsfc", "surface_upward_longwave_flux", "FLUS"),
    "toa_up_lw_radiative_flux": ("ULWRFtoa", "FLUT"),
    "toa_up_sw_radiative_flux": (
        "USWRFtoa",
        "top_of_atmos_upward_shortwave_flux",
        "FSUTOA",
    ),
    "toa_down_sw_radiative_flux": ("DSWRFtoa", "SOLIN"),
    "frozen_precipitation_rate": ("total_frozen_precipitation_rate",),
}
LAYER_PREFIXES: dict[str, tuple[str, ...]] = {
    "specific_total_water": ("specific_total_water_", "STW_"),
    "air_temperature": ("air_temperature_", "T_"),
}
# Frozen precipitation as three components, when not predicted as one field.
FROZEN_PRECIPITATION_COMPONENTS = ("ICEsfc", "GRAUPELsfc", "SNOWsfc")


class MissingVariablesError(ValueError):
    """Variables an operation needs are absent; the message names them."""


def find_surface_name(quantity: str, available: Collection[str]) -> str | None:
    """The first accepted name of ``quantity`` in ``available``, or None."""
    for name in SURFACE_NAMES[quantity]:
        if name in available:
            return name
    return None


def find_layer_names(
    quantity: str, available: Collection[str], n_levels: int
) -> list[str] | None:
    """``[prefix0, ..., prefix{n-1}]`` for the first prefix with every level present."""
    for prefix in LAYER_PREFIXES[quantity]:
        names = [f"{prefix}{k}" for k in range(n_levels)]
        if all(name in available for name in names):
            return names
    return None


def describe(quantity: str) -> str:
    """``PRESsfc`` or ``PRESsfc (or PS)``, for error messages."""
    names = SURFACE_NAMES.get(quantity) or tuple(
        f"{p}<k>" for p in LAYER_PREFIXES[quantity]
    )
    if len(names) == 1:
        return names[0]
    return f"{names[0]} (or {', '.join(names[1:])})"


class NameResolver:
    """Resolves quantities against the variables of one place, collecting misses.

    Args:
        where: what the names are, e.g. "the step's out_names".
        available: the variable names there.
        n_levels: levels of the vertical coordinate (for layered quantities).
    """

    def __init__(self, *, where: str, available: Sequence[str], n_levels: int):
        self.where = where
        self.available = list(available)
        self.n_levels = n_levels
        self.missing: list[str] = []
        self._other_spellings: list[str] = []

    def surface(self, quantity: str) -> str:
        """The name of ``quantity``; records it as missing (returns "") if absent."""
        name = find_surface_name(quantity, self.available)
        if name is None:
            names = SURFACE_NAMES[quantity]
            self.missing.append(names[0])
            if len(names) > 1:
                self._other_spellings.append(describe(quantity))
            return ""
        return name

    def layers(self, quantity: str) -> list[str]:
        """The level names of ``quantity``; records it as missing if absent."""
        names = find_layer_names(quantity, self.available, self.n_levels)
        if names is None:
            prefixes = LAYER_PREFIXES[quantity]
            # report against the spelling the data uses, if it uses one
            prefix = next(
                (p for p in prefixes if any(n.startswith(p) for n in self.available)),
                prefixes[0],
            )
            self.missing.extend(
                f"{prefix}{k}"
                for k in range(self.n_levels)
                if f"{prefix}{k}" not in self.available
            )
            return []
        return names

    def check(self, key: str) -> None:
        """Raise naming ``key`` and every missing variable, if any were missed."""
        if self.missing:
            spellings = (
                f" (also accepted: {'; '.join(self._other_spellings)})"
                if self._other_spellings
                else ""
            )
            raise MissingVariablesError(
                f"corrector {key} needs variables absent from {self.where}; "
                f"missing: {self.missing}{spellings}; present: "
                f"{sorted(self.available)}; add them to the step's names or turn "
                f"{key} off"
            )
