"""A restart file the released inference wrote continues here as it did there.

``data/ace_run/restart/`` (``scripts/make_ace_reference.py --only restart``):
the released ``fme.ace.inference`` ran ``ace_run/ckpt.tar`` for 3 steps and
wrote ``restart.nc``, which embeds the initial condition's dry-air reference;
``continuation.pt`` holds its predictions for the 3 steps after restarting
from that file.
"""

import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.inference.config import InferenceConfig
from fme.ace.inference.initial_condition import (
    DRY_AIR_REFERENCE_VARIABLE,
    InitialConditionConfig,
    read_initial_condition,
)
from fme.ace.inference.main import run_inference
from fme.core.config_loading import from_dict_strict

RUN = Path(__file__).resolve().parent / "data" / "ace_run"
RESTART = RUN / "restart" / "restart.nc"
PROGNOSTIC = [
    "PRESsfc",
    "air_temperature_0",
    "air_temperature_1",
    "specific_total_water_0",
    "specific_total_water_1",
]


def test_the_dry_air_reference_of_an_ace_restart_is_read():
    with xr.open_dataset(RESTART) as ds:
        expected = ds[DRY_AIR_REFERENCE_VARIABLE].values
        restart_state = ds["PRESsfc"].values
    assert expected.shape == (2, 1, 1) and expected.dtype == np.float64
    initial = read_initial_condition(
        InitialConditionConfig(path=str(RESTART), start_indices=None),
        names=PROGNOSTIC,
        img_shape=restart_state.shape[1:],
    )
    assert initial.corrector_state is not None
    reference = initial.corrector_state.global_dry_air_pressure
    assert reference is not None
    np.testing.assert_array_equal(reference.numpy(), expected)


def _relative_rms(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).pow(2).mean().sqrt() / theirs.pow(2).mean().sqrt())


def test_inference_continues_an_ace_restart_as_the_released_inference(tmp_path):
    fixture = json.loads((RUN / "fixture.json").read_text())
    paths = write_ace_format_dataset(tmp_path / "data", **fixture)
    config = from_dict_strict(
        InferenceConfig,
        {
            "experiment_dir": str(tmp_path / "out"),
            "n_forward_steps": 3,
            "forward_steps_in_memory": 3,
            "checkpoint_path": str(RUN / "ckpt.tar"),
            "logging": {"log_to_screen": False},
            "initial_condition": {"path": str(RESTART)},
            "forcing_loader": {"dataset": {"data_path": str(paths.data_dir)}},
        },
    )
    run_inference(config)
    expected = torch.load(RUN / "restart" / "continuation.pt", weights_only=True)
    assert set(PROGNOSTIC) <= set(expected)
    with xr.open_dataset(tmp_path / "out" / "autoregressive_predictions.nc") as ds:
        # the released file also holds derived quantities (e.g. dry-air pressure)
        compared = [n for n in expected if n in ds.data_vars]
        assert set(PROGNOSTIC) <= set(compared)
        for name in compared:
            theirs = expected[name]
            ours = torch.from_numpy(ds[name].values)
            assert ours.shape == theirs.shape == (2, 3, 8, 16), name
            for lead in range(3):
                rel = _relative_rms(ours[:, lead], theirs[:, lead])
                assert rel < 1e-5, (name, lead, rel)
