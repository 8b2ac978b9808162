"""Budgets of an atmosphere state, written out level by level in numpy (float64).

Independent of ``fme.ace.physics``: the tests compute the conserved quantities
from their definitions here and check the corrector against them. Constants
are ACE's values (``fme==2026.10.0``).
"""

import numpy as np
import torch

G = 9.80665  # m s-2
L_V = 2.5e6  # J kg-1
L_F = 3.34e5  # J kg-1
CP = 1004.6  # J kg-1 K-1
RD = 287.05  # J kg-1 K-1
RV = 461.5  # J kg-1 K-1
CV = CP - RD


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def area_mean(x: np.ndarray, lat_degrees: np.ndarray) -> np.ndarray:
    """cos-latitude weighted mean over the last two dims."""
    weights = np.cos(np.deg2rad(lat_degrees))[:, None] * np.ones(x.shape[-1])
    return (x * weights).sum(axis=(-2, -1)) / weights.sum()


def interfaces(ak: np.ndarray, bk: np.ndarray, ps: np.ndarray) -> list[np.ndarray]:
    return [ak[i] + bk[i] * ps for i in range(len(ak))]


def total_water_path(state, ak, bk, n_levels: int) -> np.ndarray:
    ps = as_numpy(state["PRESsfc"])
    p = interfaces(ak, bk, ps)
    path = np.zeros_like(ps)
    for k in range(n_levels):
        path += as_numpy(state[f"specific_total_water_{k}"]) * (p[k + 1] - p[k]) / G
    return path


def dry_air_pressure(state, ak, bk, n_levels: int) -> np.ndarray:
    return as_numpy(state["PRESsfc"]) - G * total_water_path(state, ak, bk, n_levels)


def total_energy_path(state, surface_height, ak, bk, n_levels: int) -> np.ndarray:
    """sum_k (c_v T + L_v q + g z_mid) dp / g, z from hydrostatic thickness."""
    ps = as_numpy(state["PRESsfc"])
    p = interfaces(ak, bk, ps)
    z_below = np.maximum(as_numpy(surface_height), 0.0)  # bottom interface
    energy = np.zeros_like(ps)
    for k in reversed(range(n_levels)):  # surface layer first
        t = as_numpy(state[f"air_temperature_{k}"])
        q = as_numpy(state[f"specific_total_water_{k}"])
        tv = t * (1.0 + (RV / RD - 1.0) * q)
        dz = RD * tv * (np.log(max_one(p[k + 1])) - np.log(max_one(p[k]))) / G
        z_mid = z_below + 0.5 * dz
        energy += (CV * t + L_V * q + G * z_mid) * (p[k + 1] - p[k]) / G
        z_below = z_below + dz
    return energy


def max_one(p: np.ndarray) -> np.ndarray:
    return np.maximum(p, 1.0)


def net_energy_flux_into_atmosphere(state, toa_down_sw) -> np.ndarray:
    s = {k: as_numpy(v) for k, v in state.items()}
    frozen = s.get("total_frozen_precipitation_rate", 0.0)
    toa = as_numpy(toa_down_sw) - s["USWRFtoa"] - s["ULWRFtoa"]
    surface = (
        s["DSWRFsfc"]
        - s["USWRFsfc"]
        + s["DLWRFsfc"]
        - s["ULWRFsfc"]
        - s["LHTFLsfc"]
        - s["SHTFLsfc"]
        - L_F * frozen
    )
    return toa - surface


def moisture_budget_residual(
    before, after, ak, bk, n_levels: int, dt: float
) -> np.ndarray:
    """(TWP(after) - TWP(before)) / dt - (E - P + A), per column."""
    tendency = (
        total_water_path(after, ak, bk, n_levels)
        - total_water_path(before, ak, bk, n_levels)
    ) / dt
    evaporation = as_numpy(after["LHTFLsfc"]) / L_V
    precipitation = as_numpy(after["PRATEsfc"])
    advection = as_numpy(after["tendency_of_total_water_path_due_to_advection"])
    return tendency - (evaporation - precipitation + advection)
