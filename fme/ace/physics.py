"""Physical constants and column integrals of the atmosphere, with units.

The values are ACE's (``fme==2026.10.0``), so corrected fields agree with it.
Tensors are ``[..., n_levels]`` for layer quantities (level 0 at the model top,
the last level at the surface) and ``[...]`` for column quantities; the
vertical coordinate is ACE's hybrid sigma-pressure coordinate, interface
pressure ``p_i = ak_i + bk_i * ps`` (Pa).

Definitions used by the corrector (``g`` gravity, ``dp_k`` layer pressure
thickness):

- total water path ``TWP = sum_k q_k * dp_k / g`` (kg m-2);
- dry-air pressure ``ps - g * TWP`` (Pa), proportional to the column's dry-air
  mass;
- ACE2 total energy path ``sum_k (c_v * T_k + L_v * q_k + g * z_k) * dp_k / g``
  (J m-2), with ``z_k`` the hydrostatic height of the layer midpoint above the
  surface height (kinetic energy and the ice contribution ignored, specific
  humidity approximated by specific total water, as in ACE2);
- net energy flux into the atmosphere: net downward flux at the top of the
  atmosphere minus net downward flux into the surface (W m-2).
"""

import torch

from fme.ace.data.batch import HybridSigmaPressureCoordinate

GRAVITY_M_PER_S2 = 9.80665
LATENT_HEAT_OF_VAPORIZATION_J_PER_KG = 2.5e6
LATENT_HEAT_OF_FREEZING_J_PER_KG = 3.34e5
SPECIFIC_HEAT_OF_DRY_AIR_CONST_PRESSURE_J_PER_KG_K = 1004.6
GAS_CONSTANT_DRY_AIR_J_PER_KG_K = 287.05
GAS_CONSTANT_WATER_VAPOR_J_PER_KG_K = 461.5
SPECIFIC_HEAT_OF_DRY_AIR_CONST_VOLUME_J_PER_KG_K = (
    SPECIFIC_HEAT_OF_DRY_AIR_CONST_PRESSURE_J_PER_KG_K - GAS_CONSTANT_DRY_AIR_J_PER_KG_K
)
# Interface pressures are clamped here before taking logs: data with a 0 Pa
# model top would otherwise give an infinite top-layer thickness (as in ACE).
MINIMUM_LOG_PRESSURE_PA = 1.0
# E3SM writes surface geopotential (m2 s-2) instead of height, with its own g.
GRAVITY_E3SM_M_PER_S2 = 9.80616


def layer_pressure_thickness(
    coordinate: HybridSigmaPressureCoordinate, surface_pressure: torch.Tensor
) -> torch.Tensor:
    """``dp_k = p_{k+1} - p_k`` (Pa), ``[..., n_levels]``."""
    return coordinate.interface_pressure(surface_pressure).diff(dim=-1)


def vertical_integral(
    integrand: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
) -> torch.Tensor:
    """Mass-weighted column integral ``sum_k x_k * dp_k / g``.

    Units: those of ``x`` times kg m-2.
    """
    dp = layer_pressure_thickness(coordinate, surface_pressure)
    return (integrand * dp).sum(dim=-1) / GRAVITY_M_PER_S2


def total_water_path(
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
) -> torch.Tensor:
    """Column water ``sum_k q_k * dp_k / g`` (kg m-2); ``q`` in kg kg-1."""
    return vertical_integral(
        specific_total_water, coordinate=coordinate, surface_pressure=surface_pressure
    )


def dry_air_pressure(
    surface_pressure: torch.Tensor,
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
) -> torch.Tensor:
    """Surface pressure due to dry air, ``ps - g * TWP`` (Pa)."""
    water_path = total_water_path(
        specific_total_water, coordinate=coordinate, surface_pressure=surface_pressure
    )
    return surface_pressure - GRAVITY_M_PER_S2 * water_path


def surface_pressure_from_dry_air(
    dry_air: torch.Tensor,
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
) -> torch.Tensor:
    """The ``ps`` whose dry-air pressure is ``dry_air`` at the given water (Pa).

    From ``dry = ps - sum_k (dak_k + dbk_k * ps) * q_k``:
    ``ps = (dry + sum_k dak_k * q_k) / (1 - sum_k dbk_k * q_k)``.
    """
    dak = coordinate.ak.diff().to(specific_total_water)
    dbk = coordinate.bk.diff().to(specific_total_water)
    numerator = dry_air + (dak * specific_total_water).sum(dim=-1)
    return numerator / (1.0 - (dbk * specific_total_water).sum(dim=-1))


def surface_pressure_per_dry_air(
    specific_total_water: torch.Tensor, *, coordinate: HybridSigmaPressureCoordinate
) -> torch.Tensor:
    """``d ps / d (dry-air pressure)`` at fixed water, ``1 / (1 - sum_k dbk_k q_k)``."""
    dbk = coordinate.bk.diff().to(specific_total_water)
    return 1.0 / (1.0 - (dbk * specific_total_water).sum(dim=-1))


def layer_thickness_times_gravity_per_temperature(
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
) -> torch.Tensor:
    """``g * dz_k / T_k = R_d * (1 + (R_v / R_d - 1) * q_k) * dlog(p)_k`` (J kg-1 K-1).

    The hydrostatic layer thickness is ``dz_k = R_d * T_v,k * dlog(p)_k / g``
    with virtual temperature ``T_v = T * (1 + (R_v / R_d - 1) * q)``; divided
    by ``T`` it does not depend on temperature.
    """
    pressure = coordinate.interface_pressure(surface_pressure)
    dlogp = torch.log(pressure.clamp(min=MINIMUM_LOG_PRESSURE_PA)).diff(dim=-1)
    virtual_factor = (
        1.0
        + (GAS_CONSTANT_WATER_VAPOR_J_PER_KG_K / GAS_CONSTANT_DRY_AIR_J_PER_KG_K - 1.0)
        * specific_total_water
    )
    return GAS_CONSTANT_DRY_AIR_J_PER_KG_K * virtual_factor * dlogp


def height_at_layer_midpoint(
    air_temperature: torch.Tensor,
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
    surface_height: torch.Tensor,
) -> torch.Tensor:
    """Height of each layer's midpoint (m), halfway between its interfaces.

    Interfaces are integrated upward hydrostatically from the surface height
    (negative surface heights are taken as 0, as in ACE).
    """
    thickness = (
        layer_thickness_times_gravity_per_temperature(
            specific_total_water,
            coordinate=coordinate,
            surface_pressure=surface_pressure,
        )
        * air_temperature
        / GRAVITY_M_PER_S2
    )
    # thickness of the layers below each layer (levels run top to surface)
    below = thickness.flip(-1).cumsum(-1).flip(-1) - thickness
    surface = surface_height.clamp(min=0.0)[..., None]
    return surface + below + 0.5 * thickness


def total_energy_path(
    air_temperature: torch.Tensor,
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
    surface_height: torch.Tensor,
) -> torch.Tensor:
    """ACE2's column total energy ``sum_k (c_v T + L_v q + g z)_k dp_k / g`` (J m-2)."""
    height = height_at_layer_midpoint(
        air_temperature,
        specific_total_water,
        coordinate=coordinate,
        surface_pressure=surface_pressure,
        surface_height=surface_height,
    )
    energy = (
        SPECIFIC_HEAT_OF_DRY_AIR_CONST_VOLUME_J_PER_KG_K * air_temperature
        + LATENT_HEAT_OF_VAPORIZATION_J_PER_KG * specific_total_water
        + GRAVITY_M_PER_S2 * height
    )
    return vertical_integral(
        energy, coordinate=coordinate, surface_pressure=surface_pressure
    )


def energy_path_per_uniform_warming(
    specific_total_water: torch.Tensor,
    *,
    coordinate: HybridSigmaPressureCoordinate,
    surface_pressure: torch.Tensor,
) -> torch.Tensor:
    """``d(total energy path) / dc`` when every level warms by ``c`` (J m-2 K-1).

    The energy path is affine in temperature at fixed water and pressure, so
    this is exact: ``sum_k (c_v + g dz_j/dT summed over the layers j below k
    + g dz_k/dT / 2) dp_k / g``, which does not depend on temperature.
    """
    per_kelvin = layer_thickness_times_gravity_per_temperature(
        specific_total_water, coordinate=coordinate, surface_pressure=surface_pressure
    )
    below = per_kelvin.flip(-1).cumsum(-1).flip(-1) - per_kelvin
    integrand = (
        SPECIFIC_HEAT_OF_DRY_AIR_CONST_VOLUME_J_PER_KG_K + below + 0.5 * per_kelvin
    )
    return vertical_integral(
        integrand, coordinate=coordinate, surface_pressure=surface_pressure
    )


def evaporation_rate(latent_heat_flux: torch.Tensor) -> torch.Tensor:
    """Evaporation (kg m-2 s-1) from the upward latent heat flux (W m-2)."""
    return latent_heat_flux / LATENT_HEAT_OF_VAPORIZATION_J_PER_KG


def latent_heat_flux(evaporation: torch.Tensor) -> torch.Tensor:
    """Upward latent heat flux (W m-2) from evaporation (kg m-2 s-1)."""
    return evaporation * LATENT_HEAT_OF_VAPORIZATION_J_PER_KG


def net_energy_flux_into_atmosphere(
    *,
    toa_down_sw: torch.Tensor,
    toa_up_sw: torch.Tensor,
    toa_up_lw: torch.Tensor,
    sfc_down_sw: torch.Tensor,
    sfc_up_sw: torch.Tensor,
    sfc_down_lw: torch.Tensor,
    sfc_up_lw: torch.Tensor,
    latent_heat_flux: torch.Tensor,
    sensible_heat_flux: torch.Tensor,
    frozen_precipitation_rate: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Column energy gain (W m-2): net TOA flux in minus net flux into the surface.

    Net downward TOA flux ``toa_down_sw - toa_up_sw - toa_up_lw``; net downward
    surface flux ``sfc_down_sw - sfc_up_sw + sfc_down_lw - sfc_up_lw -
    latent_heat_flux - sensible_heat_flux - L_f * frozen_precipitation_rate``
    (the turbulent fluxes positive upward, frozen precipitation in kg m-2 s-1).
    """
    toa = toa_down_sw - toa_up_sw - toa_up_lw
    surface = (
        sfc_down_sw
        - sfc_up_sw
        + sfc_down_lw
        - sfc_up_lw
        - latent_heat_flux
        - sensible_heat_flux
        - LATENT_HEAT_OF_FREEZING_J_PER_KG * frozen_precipitation_rate
    )
    return toa - surface
