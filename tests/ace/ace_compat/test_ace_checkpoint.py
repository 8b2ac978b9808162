"""A checkpoint written by the released ACE loads here and predicts the same.

``data/ace_run`` was written by ``scripts/make_ace_reference.py`` with the
released ``fme==2026.10.0``: two optimiser steps of its trainer on the
ACE-format fixture data (SFNO dhconv, dry-air corrector, EMA), then its
evaluator on ``ckpt.tar`` (which, with ACE's default
``use_ema_if_available: true``, uses the EMA weights).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr
import yaml

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.evaluate.main import load_stepper
from fme.ace.evaluate.main import main as evaluator_main
from fme.ace.stepper.ace_checkpoint import AceVariableMetadata
from fme.core.checkpoint import load_checkpoint

RUN = Path(__file__).resolve().parent / "data" / "ace_run"
OUT_NAMES = [
    "PRESsfc",
    "air_temperature_0",
    "air_temperature_1",
    "specific_total_water_0",
    "specific_total_water_1",
    "PRATEsfc",
]


def _data(tmp_path: Path) -> Path:
    fixture = json.loads((RUN / "fixture.json").read_text())
    root = tmp_path / "data_root"
    write_ace_format_dataset(root, **fixture)
    return root


def _evaluator_yaml(tmp_path: Path, checkpoint: str = "ckpt.tar") -> Path:
    _data(tmp_path)
    config = yaml.safe_load(
        (RUN / "evaluator.yaml").read_text().replace("TMP", str(tmp_path))
    )
    config["checkpoint_path"] = str(RUN / checkpoint)
    path = tmp_path / "evaluator.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "name", ["ckpt.tar", "best_ckpt.tar", "best_inference_ckpt.tar"]
)
def test_ace_checkpoint_converts_to_ours(name):
    state = load_checkpoint(RUN / name)
    stepper_state = state["trainable"]["stepper"]
    config = stepper_state["config"]["step"]["config"]
    assert config["builder"]["config"]["operator_type"] == "dhconv"
    assert config["corrector"] == {
        "type": "atmosphere_corrector",
        "config": {"conserve_dry_air": True},
    }
    assert config["out_names"] == OUT_NAMES
    assert config["residual_prediction"] is True
    info = stepper_state["dataset_info"]
    assert len(info["lat"]) == 8 and len(info["lon"]) == 16
    assert info["timestep_seconds"] == 6 * 3600
    assert info["vertical_coordinate"]["bk"][-1] == 1.0
    assert info["variable_metadata"]["PRESsfc"] == {
        "units": "Pa",
        "long_name": "surface pressure",
    }
    with torch.serialization.safe_globals(
        [(AceVariableMetadata, "fme.core.dataset.data_typing.VariableMetadata")]
    ):
        raw = torch.load(RUN / name, weights_only=True)
    ace_module = raw["stepper"]["step"]["module"]
    for key, value in stepper_state["module"].items():
        assert torch.equal(value, ace_module[f"module.{key}"]), key
    network = raw["stepper"]["config"]["step"]["config"]["normalization"]["network"]
    assert stepper_state["normalizer"]["stds"]["PRESsfc"] == network["stds"]["PRESsfc"]
    residual = raw["stepper"]["config"]["step"]["config"]["normalization"]["residual"]
    loss_stds = stepper_state["loss_normalizer"]["stds"]
    assert loss_stds["PRESsfc"] == residual["stds"]["PRESsfc"]  # prognostic
    assert loss_stds["PRATEsfc"] == network["stds"]["PRATEsfc"]  # diagnostic
    if name == "ckpt.tar":  # saved with its optimisation state: has EMA weights
        params = state["ema"]["params"]
        assert sorted(params) == sorted(stepper_state["module"])
        assert not torch.equal(
            params["decoder.2.weight"], stepper_state["module"]["decoder.2.weight"]
        )
    else:
        assert "params" not in state["ema"]
    assert "optimization" not in state  # fine-tune from it, do not resume


def test_ace_checkpoint_builds_a_stepper_with_ace_weights():
    stepper = load_stepper(RUN / "ckpt.tar", use_ema=True)
    assert stepper.out_names == OUT_NAMES
    ema = load_checkpoint(RUN / "ckpt.tar")["ema"]["params"]
    for name, value in stepper.base_module.state_dict().items():
        assert torch.equal(value, ema[name]), name


def _relative_rms(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).pow(2).mean().sqrt() / theirs.pow(2).mean().sqrt())


def test_evaluator_predicts_what_the_released_evaluator_predicted(tmp_path):
    config = _evaluator_yaml(tmp_path)
    evaluator_main([str(config)])
    expected = torch.load(RUN / "evaluator_predictions.pt", weights_only=True)
    out_dir = tmp_path / "eval"
    with xr.open_dataset(out_dir / "autoregressive_target.nc") as ds:
        for name in OUT_NAMES:
            # the same data, windows and lead times as the released evaluator
            torch.testing.assert_close(
                torch.from_numpy(ds[name].values), expected["target"][name]
            )
    with xr.open_dataset(out_dir / "autoregressive_predictions.nc") as ds:
        for name in OUT_NAMES:
            ours = torch.from_numpy(ds[name].values)
            theirs = expected["prediction"][name]
            assert ours.shape == theirs.shape == (2, 6, 8, 16)
            for lead in range(6):
                rel = _relative_rms(ours[:, lead], theirs[:, lead])
                assert rel < 1e-5, (name, lead, rel)


def test_ace_entry_point_name_runs_the_evaluator():
    result = subprocess.run(
        [sys.executable, "-m", "fme.ace.evaluator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "evaluator YAML" in result.stdout


def test_ace_best_checkpoints_hold_the_ema_weights_of_ckpt():
    # validate_using_ema: ACE writes best checkpoints with the EMA in place
    ema = load_checkpoint(RUN / "ckpt.tar")["ema"]["params"]
    for name in ("best_ckpt.tar", "best_inference_ckpt.tar"):
        stepper = load_stepper(RUN / name, use_ema=True)  # no EMA params: as saved
        for key, value in stepper.base_module.state_dict().items():
            assert torch.equal(value, ema[key]), (name, key)


def test_ace_step_keys_supported_here_are_carried_over():
    # ACE2's documented config prescribes the ocean and reads a forcing at the
    # next time; the step config here takes both, so a checkpoint trained with
    # them must convert with them, not be refused
    from fme.ace.stepper.ace_checkpoint import convert_ace_checkpoint

    def raw_checkpoint() -> dict:
        with torch.serialization.safe_globals(
            [(AceVariableMetadata, "fme.core.dataset.data_typing.VariableMetadata")]
        ):
            return torch.load(RUN / "ckpt.tar", weights_only=True)

    plain = convert_ace_checkpoint(raw_checkpoint())
    assert (
        plain["trainable"]["stepper"]["config"]["step"]["config"].get("ocean") is None
    )
    raw = raw_checkpoint()
    ocean = {
        "surface_temperature_name": "surface_temperature",
        "ocean_fraction_name": "ocean_fraction",
        "interpolate": False,
        "slab": None,
    }
    raw["stepper"]["config"]["step"]["config"]["ocean"] = ocean
    raw["stepper"]["config"]["step"]["config"]["next_step_forcing_names"] = ["DSWRFtoa"]
    config = convert_ace_checkpoint(raw)["trainable"]["stepper"]["config"]
    step = config["step"]["config"]
    assert step["ocean"] == ocean
    assert step["next_step_forcing_names"] == ["DSWRFtoa"]
