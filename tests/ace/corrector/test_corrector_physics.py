"""Physics of the corrected state: the budgets close, computed from definitions.

The budgets are computed independently (numpy, float64, level by level in
``atmosphere_budgets``) from the corrector's float32 output.
"""

import datetime

import numpy as np
import pytest
import torch
from atmosphere_budgets import (
    area_mean,
    as_numpy,
    dry_air_pressure,
    moisture_budget_residual,
    net_energy_flux_into_atmosphere,
    total_energy_path,
    total_water_path,
)

from fme.ace.corrector.atmosphere import AtmosphereCorrector
from fme.ace.corrector.registry import corrector_selector_from_yaml
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

BATCH, N_LAT, N_LON = 3, 8, 16
AK = np.array([30.0, 3000.0, 9000.0, 11000.0, 6000.0, 0.0])
BK = np.array([0.0, 0.0, 0.1, 0.35, 0.7, 1.0])
N_LEVELS = len(AK) - 1
LAT = -90.0 + (np.arange(N_LAT) + 0.5) * 180.0 / N_LAT
DT = 6 * 3600.0
WATER = [f"specific_total_water_{k}" for k in range(N_LEVELS)]
TEMPERATURE = [f"air_temperature_{k}" for k in range(N_LEVELS)]
FLUXES = ["LHTFLsfc", "SHTFLsfc", "DLWRFsfc", "ULWRFsfc", "DSWRFsfc", "USWRFsfc"]
FLUXES += ["ULWRFtoa", "USWRFtoa"]
ADVECTION = "tendency_of_total_water_path_due_to_advection"
OUT_NAMES = ["PRESsfc", *TEMPERATURE, *WATER, *FLUXES, "PRATEsfc", ADVECTION]
OUT_NAMES += ["total_frozen_precipitation_rate"]
FORCING_NAMES = ["DSWRFtoa", "HGTsfc"]
PROGNOSTIC = ["PRESsfc", *TEMPERATURE, *WATER]
ACE2S = {
    "conserve_dry_air": True,
    "moisture_budget_correction": "advection_and_precipitation",
    "clip_frozen_precipitation": True,
    "total_energy_budget_correction": {
        "method": "constant_temperature",
        "constant_unaccounted_heating": 1.5,
    },
    "force_positive_names": [*WATER, "PRATEsfc", "total_frozen_precipitation_rate"],
}


def build(config: dict) -> AtmosphereCorrector:
    corrector = corrector_selector_from_yaml(config, path="corrector").build(
        gridded_operations=LatLonOperations.from_latitudes(
            torch.tensor(LAT, dtype=torch.float32), N_LON
        ),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor(AK, dtype=torch.float32),
            bk=torch.tensor(BK, dtype=torch.float32),
        ),
        out_names=OUT_NAMES,
        in_names=PROGNOSTIC + FORCING_NAMES,
        next_step_names=FORCING_NAMES,
        timestep=datetime.timedelta(seconds=DT),
    )
    assert isinstance(corrector, AtmosphereCorrector)
    return corrector


def random_state(seed: int, *, raw: bool) -> dict[str, torch.Tensor]:
    """A plausible column state; ``raw`` adds network-like errors."""
    gen = torch.Generator().manual_seed(seed)

    def field(offset: float, scale: float) -> torch.Tensor:
        noise = torch.randn(BATCH, N_LAT, N_LON, generator=gen, dtype=torch.float64)
        return (offset + scale * noise).float()

    error = 1.0 if raw else 0.2
    state = {"PRESsfc": field(97000.0, 2000.0)}
    for k in range(N_LEVELS):
        state[TEMPERATURE[k]] = field(210.0 + 14.0 * k, 3.0 + 3.0 * error)
        state[WATER[k]] = field(0.0015 * (k + 1) ** 2, 0.003 * error)
    for name, (offset, scale) in zip(
        FLUXES,
        [(80, 40), (20, 15), (340, 30), (390, 40), (180, 80), (25, 10), (240, 20)]
        + [(100, 30)],
        strict=True,
    ):
        state[name] = field(offset, scale)
    state["PRATEsfc"] = field(3e-5, 4e-5 * error)
    state["total_frozen_precipitation_rate"] = field(1e-5, 3e-5)
    state[ADVECTION] = field(1e-6, 3e-5)
    return state


def forcing(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1000)
    return {
        "DSWRFtoa": 300.0 + 400.0 * torch.rand(BATCH, N_LAT, N_LON, generator=gen),
        "HGTsfc": 1200.0 * torch.randn(BATCH, N_LAT, N_LON, generator=gen),
    }


def moisture_tolerance(*states) -> float:
    """Float32 rounding of the water paths: 16 ulp of the largest, per step (kg m-2 s-1)."""
    largest = max(total_water_path(s, AK, BK, N_LEVELS).max() for s in states)
    return 16 * 2.0**-24 * largest / DT


def mean_dry_air(state) -> np.ndarray:
    return area_mean(dry_air_pressure(state, AK, BK, N_LEVELS), LAT)


def energy_residual(before, after, forcing_data, heating: float) -> np.ndarray:
    """<E(after)> - <E(before)> - (<F(after)> + Q) dt, per sample (J m-2)."""
    height = forcing_data["HGTsfc"]
    gained = area_mean(
        total_energy_path(after, height, AK, BK, N_LEVELS), LAT
    ) - area_mean(total_energy_path(before, height, AK, BK, N_LEVELS), LAT)
    flux = area_mean(
        net_energy_flux_into_atmosphere(after, forcing_data["DSWRFtoa"]), LAT
    )
    return gained - (flux + heating) * DT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dry_air_stays_at_the_initial_condition_through_a_rollout(seed):
    corrector = build({"conserve_dry_air": True, "force_positive_names": WATER})
    initial = {**random_state(seed, raw=False), **forcing(seed)}
    reference = mean_dry_air(initial)
    state = corrector.initial_state(initial)
    input_data = initial
    for step in range(4):
        raw = random_state(100 * seed + step + 1, raw=True)
        assert np.abs(mean_dry_air(raw) - reference).max() > 100.0  # Pa
        out = {**raw, **corrector(input_data, raw, forcing(seed), state)}
        np.testing.assert_allclose(mean_dry_air(out), reference, rtol=1e-6)
        # the next input is another state entirely: the pin is the IC's
        input_data = {**random_state(200 + step, raw=False), **forcing(seed)}


@pytest.mark.parametrize(
    "option", ["advection_and_precipitation", "advection_and_evaporation"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_column_moisture_budget_closes_in_every_column(option, seed):
    corrector = build({"conserve_dry_air": True, "moisture_budget_correction": option})
    before = {**random_state(seed, raw=False), **forcing(seed)}
    raw = random_state(seed + 10, raw=True)
    out = {**raw, **corrector(before, raw, forcing(seed))}
    scale = np.abs(as_numpy(raw["PRATEsfc"])).mean()
    raw_residual = moisture_budget_residual(before, raw, AK, BK, N_LEVELS, DT)
    residual = moisture_budget_residual(before, out, AK, BK, N_LEVELS, DT)
    assert np.abs(raw_residual).max() > 0.1 * scale
    np.testing.assert_allclose(residual, 0.0, atol=moisture_tolerance(before, out))
    np.testing.assert_allclose(
        area_mean(as_numpy(out[ADVECTION]), LAT), 0.0, atol=1e-6 * scale
    )


@pytest.mark.parametrize("option", ["precipitation", "evaporation"])
@pytest.mark.parametrize("seed", [0, 1])
def test_global_moisture_budget_closes(option, seed):
    corrector = build(
        {
            "zero_global_mean_moisture_advection": True,
            "moisture_budget_correction": option,
        }
    )
    before = {**random_state(seed, raw=False), **forcing(seed)}
    raw = random_state(seed + 20, raw=True)
    out = {**raw, **corrector(before, raw, forcing(seed))}
    scale = np.abs(as_numpy(raw["PRATEsfc"])).mean()
    residual = moisture_budget_residual(before, out, AK, BK, N_LEVELS, DT)
    assert (
        np.abs(
            area_mean(moisture_budget_residual(before, raw, AK, BK, N_LEVELS, DT), LAT)
        ).max()
        > 0.01 * scale
    )
    np.testing.assert_allclose(
        area_mean(residual, LAT), 0.0, atol=moisture_tolerance(before, out)
    )
    # only the global budget: columns still have residuals
    assert np.abs(residual).max() > 0.01 * scale
    unchanged = "LHTFLsfc" if option == "precipitation" else "PRATEsfc"
    torch.testing.assert_close(out[unchanged], raw[unchanged], rtol=0, atol=0)


@pytest.mark.parametrize("heating", [0.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_total_energy_budget_closes(heating, seed):
    corrector = build(
        {
            "total_energy_budget_correction": {
                "method": "constant_temperature",
                "constant_unaccounted_heating": heating,
            }
        }
    )
    next_forcing = forcing(seed)
    before = {**random_state(seed, raw=False), **next_forcing}
    raw = random_state(seed + 30, raw=True)
    out = {**raw, **corrector(before, raw, next_forcing)}
    size = area_mean(
        total_energy_path(before, next_forcing["HGTsfc"], AK, BK, N_LEVELS), LAT
    )
    assert (
        np.abs(energy_residual(before, raw, next_forcing, heating)).max()
        > 1e-4 * size.min()
    )
    np.testing.assert_allclose(
        energy_residual(before, out, next_forcing, heating), 0.0, atol=5e-7 * size.max()
    )
    # one temperature change, the same on every level and column
    change = [as_numpy(out[n] - raw[n]) for n in TEMPERATURE]
    for level in change:
        np.testing.assert_allclose(
            level, change[0][:, :1, :1] * np.ones_like(level), rtol=1e-3
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_ace2s_chain_satisfies_every_constraint_at_once(seed):
    corrector = build(ACE2S)
    next_forcing = forcing(seed)
    initial = {**random_state(seed, raw=False), **next_forcing}
    raw = random_state(seed + 40, raw=True)
    out = {**raw, **corrector(initial, raw, next_forcing)}
    np.testing.assert_allclose(mean_dry_air(out), mean_dry_air(initial), rtol=1e-6)
    residual = moisture_budget_residual(initial, out, AK, BK, N_LEVELS, DT)
    np.testing.assert_allclose(residual, 0.0, atol=moisture_tolerance(initial, out))
    size = area_mean(
        total_energy_path(initial, next_forcing["HGTsfc"], AK, BK, N_LEVELS), LAT
    )
    np.testing.assert_allclose(
        energy_residual(initial, out, next_forcing, 1.5), 0.0, atol=5e-7 * size.max()
    )
    for name in WATER:
        assert out[name].min() >= 0
    assert torch.all(out["total_frozen_precipitation_rate"] <= out["PRATEsfc"])
    # the corrector returns exactly the variables it changed
    changed = corrector(initial, raw, next_forcing)
    assert set(changed) == {
        "PRESsfc",
        *WATER,
        *TEMPERATURE,
        "PRATEsfc",
        "total_frozen_precipitation_rate",
        ADVECTION,
    }
