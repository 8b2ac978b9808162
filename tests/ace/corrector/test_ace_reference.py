"""Our atmosphere corrector against the released ACE corrector on the same inputs.

The reference file was written by ``scripts/make_ace_corrector_reference.py``
with the released ``fme==2026.10.0`` (see that script for the command).
"""

import datetime
from pathlib import Path

import pytest
import torch

from fme.ace.corrector.registry import corrector_selector_from_yaml
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

REFERENCE_PATH = Path(__file__).parent / "data" / "ace_corrector_reference.pt"
REFERENCE = torch.load(REFERENCE_PATH, weights_only=True)
CASES = sorted(REFERENCE["cases"])


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    return dict(zip(packed["names"], packed["values"], strict=True))


INPUT = unpack(REFERENCE["input"])
GEN = unpack(REFERENCE["gen"])
FORCING = unpack(REFERENCE["forcing"])
FORCING_NAMES = sorted(FORCING)
OUT_NAMES = sorted(GEN)
IN_NAMES = [n for n in OUT_NAMES if n in INPUT] + FORCING_NAMES


def build(config: dict):
    selector = corrector_selector_from_yaml(config, path="corrector")
    return selector.build(
        gridded_operations=LatLonOperations.from_latitudes(
            REFERENCE["lat"], REFERENCE["lon"].shape[0]
        ),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=REFERENCE["ak"], bk=REFERENCE["bk"]
        ),
        out_names=OUT_NAMES,
        in_names=IN_NAMES,
        next_step_names=FORCING_NAMES,
        timestep=datetime.timedelta(seconds=REFERENCE["timestep_seconds"]),
    )


def assert_matches(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference)
    for name, expected in reference.items():
        # float32 inputs; ACE sums in a different order (and dry air in float64)
        scale = expected.abs().max().clamp(min=1e-30)
        torch.testing.assert_close(
            ours[name] / scale, expected / scale, rtol=0, atol=5e-6, msg=name
        )


def test_reference_file_is_small_and_has_every_option():
    assert REFERENCE_PATH.stat().st_size < 100_000
    options = set()
    for case in REFERENCE["cases"].values():
        options |= {k for k, v in case["config"].items() if v}
        option = case["config"].get("moisture_budget_correction")
        if option:
            options.add(option)
    assert options >= {
        "conserve_dry_air",
        "zero_global_mean_moisture_advection",
        "precipitation",
        "evaporation",
        "advection_and_precipitation",
        "advection_and_evaporation",
        "clip_frozen_precipitation",
        "total_energy_budget_correction",
        "force_positive_names",
        "keep_gradient_through_clamps",
    }


@pytest.mark.parametrize("case", CASES)
def test_flat_form_matches_released_corrector(case):
    config = REFERENCE["cases"][case]["config"]
    corrector = build(dict(config))
    ours = corrector(INPUT, GEN, FORCING)
    assert_matches(ours, unpack(REFERENCE["cases"][case]["changed"]))


@pytest.mark.parametrize("case", CASES)
def test_typed_form_and_carried_state_match_released_corrector(case):
    """Second step of a rollout: dry air stays pinned to the first step's input."""
    config = REFERENCE["cases"][case]["config"]
    corrector = build({"type": "atmosphere_corrector", "config": dict(config)})
    state = corrector.initial_state(INPUT)
    ours = corrector(
        unpack(REFERENCE["second_input"]),
        unpack(REFERENCE["second_gen"]),
        FORCING,
        state,
    )
    assert_matches(ours, unpack(REFERENCE["cases"][case]["second_changed"]))
