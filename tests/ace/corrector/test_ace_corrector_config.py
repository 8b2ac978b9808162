"""ACE's corrector keys: both YAML forms, and every bad input fails at build."""

import datetime
import logging

import pytest
import torch

from fme.ace.corrector.atmosphere import AtmosphereCorrector, AtmosphereCorrectorConfig
from fme.ace.corrector.registry import corrector_selector_from_yaml
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.gridded_ops import LatLonOperations

N_LEVELS = 2
WATER = [f"specific_total_water_{k}" for k in range(N_LEVELS)]
TEMPERATURE = [f"air_temperature_{k}" for k in range(N_LEVELS)]
FLUXES = ["LHTFLsfc", "SHTFLsfc", "DLWRFsfc", "ULWRFsfc", "DSWRFsfc", "USWRFsfc"]
FLUXES += ["ULWRFtoa", "USWRFtoa"]
ADVECTION = "tendency_of_total_water_path_due_to_advection"
OUT = ["PRESsfc", *TEMPERATURE, *WATER, *FLUXES, "PRATEsfc", ADVECTION]
FORCING = ["DSWRFtoa", "HGTsfc"]
ENERGY = {"total_energy_budget_correction": {"method": "constant_temperature"}}


def build(config: dict, *, out=OUT, forcing=FORCING) -> AtmosphereCorrector:
    corrector = corrector_selector_from_yaml(config, path="corrector").build(
        gridded_operations=LatLonOperations.from_latitudes(
            torch.tensor([-45.0, 45.0]), 4
        ),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor([100.0, 5000.0, 0.0]), bk=torch.tensor([0.0, 0.3, 1.0])
        ),
        out_names=out,
        in_names=["PRESsfc", *TEMPERATURE, *WATER, *forcing],
        next_step_names=forcing,
        timestep=datetime.timedelta(hours=6),
    )
    assert isinstance(corrector, AtmosphereCorrector)
    return corrector


def test_flat_and_typed_forms_build_the_same_chain():
    config = {
        "conserve_dry_air": True,
        "zero_global_mean_moisture_advection": True,
        "moisture_budget_correction": "advection_and_precipitation",
        "force_positive_names": ["specific_total_water", "PRATEsfc"],
        **ENERGY,
    }
    flat = build(config)
    typed = build({"type": "atmosphere_corrector", "config": config})
    names = [type(op).__name__ for op in flat.operations]
    assert names == [type(op).__name__ for op in typed.operations]
    assert names == [
        "ForcePositive",
        "ConserveDryAir",
        "ZeroGlobalMeanMoistureAdvection",
        "MoistureBudgetCorrection",
        "TotalEnergyBudgetCorrection",
    ]
    assert flat.changed_names == typed.changed_names


def test_energy_budget_without_surface_height_names_key_and_variable():
    with pytest.raises(ValueError) as info:
        build(ENERGY, forcing=["DSWRFtoa"])
    message = str(info.value)
    assert "total_energy_budget_correction" in message and "HGTsfc" in message


def test_energy_budget_without_fluxes_names_each_missing_one():
    out = [n for n in OUT if n not in ("ULWRFtoa", "SHTFLsfc")]
    with pytest.raises(ValueError, match="total_energy_budget_correction") as info:
        build(ENERGY, out=out)
    assert "missing: ['ULWRFtoa', 'SHTFLsfc']" in str(info.value)


def test_energy_budget_needs_toa_shortwave_as_forcing():
    with pytest.raises(ValueError, match="missing: \\['DSWRFtoa'\\]"):
        build(ENERGY, forcing=["HGTsfc"])


@pytest.mark.parametrize(
    "option, missing",
    [
        ("advection_and_precipitation", ADVECTION),
        ("precipitation", "LHTFLsfc"),
        ("evaporation", "PRATEsfc"),
    ],
)
def test_moisture_budget_names_missing_variables(option, missing):
    out = [n for n in OUT if n != missing]
    with pytest.raises(
        ValueError, match=f"moisture_budget_correction={option}"
    ) as info:
        build({"moisture_budget_correction": option}, out=out)
    assert f"missing: ['{missing}']" in str(info.value)


def test_precipitation_option_does_not_need_advection():
    corrector = build(
        {"moisture_budget_correction": "precipitation"},
        out=[n for n in OUT if n != ADVECTION],
    )
    assert corrector.changed_names == ["PRATEsfc"]


def test_precipitation_option_with_advection_not_zero_mean_warns(caplog):
    with caplog.at_level(logging.WARNING):
        build({"moisture_budget_correction": "precipitation"})
    assert "zero_global_mean_moisture_advection: true" in caplog.text


def test_clip_frozen_without_moisture_budget_warns_it_does_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        corrector = build({"clip_frozen_precipitation": True})
    assert corrector.operations == []
    assert "clip_frozen_precipitation=true has no effect" in caplog.text


def test_ace_spellings_are_accepted():
    out = ["PS", "STW_0", "STW_1", "PRECT", "LHFLX"]
    corrector = corrector_selector_from_yaml(
        {"conserve_dry_air": True, "moisture_budget_correction": "precipitation"},
        path="corrector",
    ).build(
        gridded_operations=LatLonOperations.from_latitudes(torch.tensor([0.0]), 2),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor([100.0, 5000.0, 0.0]), bk=torch.tensor([0.0, 0.3, 1.0])
        ),
        out_names=out,
        timestep=datetime.timedelta(hours=6),
    )
    assert corrector.changed_names == ["PS", "PRECT"]


@pytest.mark.parametrize(
    "config, match",
    [
        ({"moisture_budget_correction": "rain"}, "moisture_budget_correction"),
        (
            {"total_energy_budget_correction": {"method": "constant_pressure"}},
            "constant_temperature",
        ),
        ({"corrector_disabled_epochs": 2}, "not supported here: corrector_disabled"),
        ({"conserve_dry_mass": True}, "conserve_dry_mass"),
        ({"type": "atmosphere_corrector", "extra": 1}, "extra"),
    ],
)
def test_bad_values_fail_at_config_time(config, match):
    with pytest.raises(ConfigError, match=match):
        corrector_selector_from_yaml(config, path="stepper.step.config.corrector")


def test_strict_dataclass_load_of_energy_block():
    config = from_dict_strict(
        AtmosphereCorrectorConfig,
        {
            "total_energy_budget_correction": {
                "method": "constant_temperature",
                "constant_unaccounted_heating": 3.0,
            }
        },
    )
    assert config.total_energy_budget_correction is not None
    assert config.total_energy_budget_correction.constant_unaccounted_heating == 3.0


def test_force_positive_name_absent_from_outputs_fails():
    with pytest.raises(ValueError, match="force_positive_names.*Q2m"):
        build({"force_positive_names": ["Q2m"]})
