"""Pre-images and gradients of ACE's moisture, frozen-clip and energy operations."""

import datetime

import pytest
import torch

from fme.ace.corrector.atmosphere import AtmosphereCorrector
from fme.ace.corrector.registry import corrector_selector_from_yaml
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

BATCH, N_LAT, N_LON = 2, 3, 4
N_LEVELS = 3
WATER = [f"specific_total_water_{k}" for k in range(N_LEVELS)]
TEMPERATURE = [f"air_temperature_{k}" for k in range(N_LEVELS)]
FLUXES = ["LHTFLsfc", "SHTFLsfc", "DLWRFsfc", "ULWRFsfc", "DSWRFsfc", "USWRFsfc"]
FLUXES += ["ULWRFtoa", "USWRFtoa"]
ADVECTION = "tendency_of_total_water_path_due_to_advection"
FROZEN = "total_frozen_precipitation_rate"
OUT = ["PRESsfc", *TEMPERATURE, *WATER, *FLUXES, "PRATEsfc", ADVECTION, FROZEN]
FORCING = ["DSWRFtoa", "HGTsfc"]
OPS = LatLonOperations.from_latitudes(torch.tensor([-50.0, 0.0, 50.0]), N_LON)
FULL = {
    "conserve_dry_air": True,
    "zero_global_mean_moisture_advection": True,
    "moisture_budget_correction": "advection_and_precipitation",
    "clip_frozen_precipitation": True,
    "total_energy_budget_correction": {
        "method": "constant_temperature",
        "constant_unaccounted_heating": 1.0,
    },
    "force_positive_names": [*WATER, "PRATEsfc", FROZEN],
}


def build(config: dict) -> AtmosphereCorrector:
    corrector = corrector_selector_from_yaml(config, path="corrector").build(
        gridded_operations=OPS,
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor([40.0, 4000.0, 9000.0, 0.0]),
            bk=torch.tensor([0.0, 0.05, 0.5, 1.0]),
        ),
        out_names=OUT,
        in_names=["PRESsfc", *TEMPERATURE, *WATER, *FORCING],
        next_step_names=FORCING,
        timestep=datetime.timedelta(hours=6),
    )
    assert isinstance(corrector, AtmosphereCorrector)
    return corrector


def state(seed: int, *, raw: bool = True) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def field(offset: float, scale: float) -> torch.Tensor:
        return offset + scale * torch.randn(
            BATCH, N_LAT, N_LON, generator=gen, dtype=torch.float64
        )

    error = 1.0 if raw else 0.2
    out = {"PRESsfc": field(98000.0, 1500.0)}
    for k in range(N_LEVELS):
        out[TEMPERATURE[k]] = field(220.0 + 20.0 * k, 5.0)
        out[WATER[k]] = field(0.003 * (k + 1), 0.004 * error)
    for name, offset in zip(FLUXES, [80, 20, 340, 390, 180, 25, 240, 100], strict=True):
        out[name] = field(float(offset), 20.0)
    out["PRATEsfc"] = field(3e-5, 4e-5 * error)
    out[FROZEN] = field(1e-5, 3e-5)
    out[ADVECTION] = field(1e-6, 3e-5)
    return out


def forcing(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 500)
    return {
        "DSWRFtoa": 500.0 + 100 * torch.rand(BATCH, N_LAT, N_LON, generator=gen),
        "HGTsfc": 800.0 * torch.randn(BATCH, N_LAT, N_LON, generator=gen),
    }


def distance(a: dict, b: dict, names: list[str]) -> torch.Tensor:
    return sum(OPS.area_weighted_mean((a[n] - b[n]) ** 2) for n in names)


CONFIGS = {
    "full": FULL,
    "precipitation": {"moisture_budget_correction": "precipitation"},
    "evaporation": {"moisture_budget_correction": "evaporation"},
    "advection_and_evaporation": {
        "moisture_budget_correction": "advection_and_evaporation"
    },
    "energy": {"total_energy_budget_correction": {"method": "constant_temperature"}},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_preimage_maps_onto_the_corrected_target(name):
    corrector = build(CONFIGS[name])
    next_forcing = forcing(0)
    input_data = {**state(0, raw=False), **next_forcing}
    raw, unconstrained = state(1), state(2)
    corrected_target = corrector(input_data, unconstrained, next_forcing)
    preimage = corrector.nearest_preimage(
        raw, unconstrained, input_data, forcing_data=next_forcing
    )
    assert sorted(preimage) == sorted(corrector.changed_names)
    # unchanged variables are the target's: the correction is the identity there
    again = corrector(input_data, {**unconstrained, **preimage}, next_forcing)
    for key, value in corrected_target.items():
        scale = value.abs().max()
        torch.testing.assert_close(again[key] / scale, value / scale, rtol=0, atol=1e-7)


def test_energy_preimage_is_the_nearest_uniform_warming():
    corrector = build(CONFIGS["energy"])
    next_forcing = forcing(3)
    input_data = {**state(3, raw=False), **next_forcing}
    raw = state(4)
    unconstrained = state(5)
    target = {**unconstrained, **corrector(input_data, unconstrained, next_forcing)}
    preimage = corrector.nearest_preimage(
        raw, target, input_data, forcing_data=next_forcing
    )
    best = distance({**raw, **preimage}, raw, TEMPERATURE)
    for offset in (-0.3, -0.01, 0.01, 0.3):
        other = {n: preimage[n] + offset for n in TEMPERATURE}
        corrected = corrector(input_data, {**target, **other}, next_forcing)
        for n in TEMPERATURE:  # also a pre-image: the energy path is affine in T
            torch.testing.assert_close(corrected[n], target[n], rtol=1e-12, atol=1e-9)
        assert torch.all(distance({**raw, **other}, raw, TEMPERATURE) > best)


def test_precipitation_preimage_is_the_nearest_rescale():
    corrector = build(CONFIGS["precipitation"])
    next_forcing = forcing(6)
    input_data = {**state(6, raw=False), **next_forcing}
    raw = state(7)
    unconstrained = state(8)
    target = {**unconstrained, **corrector(input_data, unconstrained, next_forcing)}
    preimage = corrector.nearest_preimage(
        raw, target, input_data, forcing_data=next_forcing
    )
    best = distance({**raw, **preimage}, raw, ["PRATEsfc"])
    for factor in (0.8, 0.99, 1.01, 1.2):
        other = {"PRATEsfc": preimage["PRATEsfc"] * factor}
        corrected = corrector(input_data, {**target, **other}, next_forcing)
        torch.testing.assert_close(corrected["PRATEsfc"], target["PRATEsfc"])
        assert torch.all(distance({**raw, **other}, raw, ["PRATEsfc"]) > best)


def test_frozen_clip_preimage():
    corrector = build(FULL)
    next_forcing = forcing(9)
    input_data = {**state(9, raw=False), **next_forcing}
    raw = state(10)
    unconstrained = state(11)
    target = {**unconstrained, **corrector(input_data, unconstrained, next_forcing)}
    at_ceiling = target[FROZEN] == target["PRATEsfc"]
    assert at_ceiling.any() and (~at_ceiling).any()
    preimage = corrector.nearest_preimage(
        raw, target, input_data, forcing_data=next_forcing
    )
    # the clip's stage: at the ceiling the pre-image keeps raw values above it
    assert torch.all(preimage[FROZEN][~at_ceiling] == target[FROZEN][~at_ceiling])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_corrector_is_differentiable(name):
    corrector = build(CONFIGS[name])
    next_forcing = {k: v.double() for k, v in forcing(12).items()}
    input_data = {**state(12, raw=False), **next_forcing}
    raw = state(13)
    # keep away from clamp kinks so finite differences are valid
    for n in [*WATER, "PRATEsfc", FROZEN]:
        raw[n] = raw[n].abs() + 1e-4 if n != FROZEN else raw[n].abs() * 0.1
    inputs = ["PRESsfc", "PRATEsfc", "LHTFLsfc", TEMPERATURE[0], WATER[1], ADVECTION]
    leaves = tuple(raw[n].clone().requires_grad_() for n in inputs)

    def corrected(*values):
        out = corrector(
            input_data, {**raw, **dict(zip(inputs, values, strict=True))}, next_forcing
        )
        return tuple(out[k] for k in sorted(out))

    assert torch.autograd.gradcheck(corrected, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
