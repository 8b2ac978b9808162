"""Write the released ACE corrector's outputs on a tiny case, for our tests to match.

Run with a separate throwaway virtualenv that has the released ``fme==2026.10.0``
(never a dependency of this project), from *outside* this checkout so that
``import fme`` finds the released package::

    cd /tmp && /path/to/reference-venv/bin/python \\
        /path/to/checkout/scripts/make_ace_corrector_reference.py \\
        --out /path/to/checkout/tests/ace/corrector/data/ace_corrector_reference.pt

The file holds the inputs (grid, hybrid coordinate, the step's input state, the
network's raw output, the next time's forcing) and, for each corrector config
below, the released corrector's corrected values of the variables it changed.
``tests/ace/corrector/test_ace_reference.py`` runs our corrector on the same
inputs and compares. Deterministic (fixed seed); about 45 kB.
"""

import argparse
import datetime
from pathlib import Path

import torch

N_BATCH, N_LAT, N_LON = 2, 4, 8
AK = [50.0, 5000.0, 12000.0, 8000.0, 0.0]
BK = [0.0, 0.0, 0.2, 0.6, 1.0]
N_LEVELS = len(AK) - 1
TIMESTEP = datetime.timedelta(hours=6)
WATER = [f"specific_total_water_{k}" for k in range(N_LEVELS)]
TEMPERATURE = [f"air_temperature_{k}" for k in range(N_LEVELS)]
POSITIVE = [*WATER, "PRATEsfc", "total_frozen_precipitation_rate", "ULWRFsfc"]

CASES: dict[str, dict] = {
    "ace2s_full": {
        "conserve_dry_air": True,
        "moisture_budget_correction": "advection_and_precipitation",
        "clip_frozen_precipitation": True,
        "total_energy_budget_correction": {
            "method": "constant_temperature",
            "constant_unaccounted_heating": 2.5,
        },
        "force_positive_names": POSITIVE,
    },
    "precipitation": {
        "zero_global_mean_moisture_advection": True,
        "moisture_budget_correction": "precipitation",
    },
    "evaporation": {
        "zero_global_mean_moisture_advection": True,
        "moisture_budget_correction": "evaporation",
        "force_positive_names": ["PRATEsfc"],
    },
    "advection_and_evaporation": {
        "conserve_dry_air": True,
        "moisture_budget_correction": "advection_and_evaporation",
    },
    "energy_only": {
        "total_energy_budget_correction": {"method": "constant_temperature"},
    },
    "dry_air_positive_clamp": {
        "conserve_dry_air": True,
        "force_positive_names": WATER,
        "keep_gradient_through_clamps": True,
    },
}


def _latitudes() -> torch.Tensor:
    return -90.0 + (torch.arange(N_LAT, dtype=torch.float64) + 0.5) * 180.0 / N_LAT


def _area_weights() -> torch.Tensor:
    """cos(latitude), as ``fme.core.gridded_ops.LatLonOperations.from_latitudes``."""
    weights = torch.cos(torch.deg2rad(_latitudes())).clamp(min=0.0)
    return weights[:, None].expand(-1, N_LON).to(torch.float32).contiguous()


def _state(generator: torch.Generator, *, raw: bool) -> dict[str, torch.Tensor]:
    """An atmosphere state; ``raw`` adds network-like errors (negative water...)."""

    def field(offset: float, scale: float) -> torch.Tensor:
        noise = torch.randn(N_BATCH, N_LAT, N_LON, generator=generator)
        return (offset + scale * noise).to(torch.float32)

    noise = 1.0 if raw else 0.3
    state = {"PRESsfc": field(98000.0, 1500.0)}
    for k in range(N_LEVELS):
        state[TEMPERATURE[k]] = field(220.0 + 15.0 * k, 5.0)
        state[WATER[k]] = field(0.002 * (k + 1) ** 2, 0.004 * noise)
    state["PRATEsfc"] = field(3e-5, 4e-5 * noise)
    state["total_frozen_precipitation_rate"] = field(1e-5, 2e-5)
    state["LHTFLsfc"] = field(80.0, 40.0)
    state["SHTFLsfc"] = field(20.0, 15.0)
    state["DLWRFsfc"] = field(340.0, 30.0)
    state["ULWRFsfc"] = field(390.0, 40.0)
    state["DSWRFsfc"] = field(180.0, 80.0)
    state["USWRFsfc"] = field(25.0, 10.0)
    state["ULWRFtoa"] = field(240.0, 20.0)
    state["USWRFtoa"] = field(100.0, 30.0)
    state["tendency_of_total_water_path_due_to_advection"] = field(2e-6, 3e-5)
    return state


def make_inputs(seed: int = 0) -> dict:
    """The deterministic inputs shared by every case."""
    generator = torch.Generator().manual_seed(seed)
    forcing = {
        "DSWRFtoa": (
            400.0 + 300.0 * torch.rand(N_BATCH, N_LAT, N_LON, generator=generator)
        ).to(torch.float32),
        "HGTsfc": (1500.0 * torch.randn(N_BATCH, N_LAT, N_LON, generator=generator)).to(
            torch.float32
        ),  # partly negative (taken as 0 m)
    }
    input_data = {**_state(generator, raw=False), **forcing}
    gen_data = _state(generator, raw=True)
    second_input = {**_state(generator, raw=False), **forcing}
    second_gen = _state(generator, raw=True)
    return {
        "ak": torch.tensor(AK, dtype=torch.float32),
        "bk": torch.tensor(BK, dtype=torch.float32),
        "lat": _latitudes().to(torch.float32),
        "lon": torch.arange(N_LON, dtype=torch.float32) * 360.0 / N_LON,
        "timestep_seconds": TIMESTEP.total_seconds(),
        "input": input_data,
        "gen": gen_data,
        "forcing": forcing,
        "second_input": second_input,
        "second_gen": second_gen,
    }


def run_reference(inputs: dict) -> dict:
    """The released corrector's changed fields for every case."""
    import dacite
    from fme.core.coordinates import HybridSigmaPressureCoordinate
    from fme.core.corrector.atmosphere import AtmosphereCorrectorConfig

    from fme.core.gridded_ops import LatLonOperations

    ops = LatLonOperations(_area_weights())
    coordinate = HybridSigmaPressureCoordinate(ak=inputs["ak"], bk=inputs["bk"])
    cases = {}
    for name, config_dict in CASES.items():
        config = dacite.from_dict(
            AtmosphereCorrectorConfig, config_dict, config=dacite.Config(strict=True)
        )
        corrector = config._build(ops, coordinate, TIMESTEP)
        first = corrector(inputs["input"], inputs["gen"], inputs["forcing"], None)
        second = corrector(
            inputs["second_input"],
            inputs["second_gen"],
            inputs["forcing"],
            first.corrector_state,
        )
        cases[name] = {
            "config": config_dict,
            "changed": {k: first.corrected[k] for k in first.modified_names},
            # the second step of a rollout, with the state carried from the first
            "second_changed": {k: second.corrected[k] for k in second.modified_names},
        }
    return cases


def pack(data: dict[str, torch.Tensor]) -> dict:
    """``{names, values}`` with the tensors stacked (one storage keeps the file small)."""
    names = sorted(data)
    return {"names": names, "values": torch.stack([data[n] for n in names])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import fme

    if not getattr(fme, "__version__", "").startswith("2026.10"):
        raise SystemExit(
            f"run this with the released fme==2026.10.0, found {fme.__file__}"
        )
    inputs = make_inputs()
    cases = run_reference(inputs)
    reference = {
        key: pack(value) if isinstance(value, dict) else value
        for key, value in inputs.items()
    }
    reference["cases"] = {
        name: {
            "config": case["config"],
            "changed": pack(case["changed"]),
            "second_changed": pack(case["second_changed"]),
        }
        for name, case in cases.items()
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
