"""Frozen format-1 SFNO checkpoints load in ACE's layout and predict the same."""

from pathlib import Path

import pytest
import torch

from fme.ace.stepper.stepper import Stepper
from fme.core.checkpoint import CHECKPOINT_FORMAT_VERSION, load_checkpoint

DATA = Path(__file__).resolve().parent / "data"
CASES = ["equiangular_diagonal", "legendre_gauss_scale_factor_2"]


@pytest.mark.parametrize("case", CASES)
def test_format_1_sfno_migrates_to_ace_names_and_predicts_the_same(case):
    path = DATA / f"checkpoint_v1_sfno_{case}.tar"
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == 1
    assert "blocks.0.spectral_conv.weight" in raw["trainable"]["stepper"]["module"]
    state = load_checkpoint(path)
    assert state["format_version"] == CHECKPOINT_FORMAT_VERSION == 2
    assert "optimization" not in state  # old optimiser shapes: not resumable
    module = state["trainable"]["stepper"]["module"]
    assert "blocks.0.filter.filter.weight" in module
    assert module["blocks.0.filter.filter.bias"].abs().sum() == 0
    assert module["blocks.1.mlp.fwd.2.weight"].dim() == 4
    stepper = Stepper.from_state(state["trainable"]["stepper"])
    expected = torch.load(DATA / f"checkpoint_v1_sfno_{case}_expected.pt")
    with torch.no_grad():
        out = stepper.step.step(expected["input"], {}, detach_uncorrected=True)
    for name, value in expected["output"].items():
        torch.testing.assert_close(out.output[name], value, rtol=1e-5, atol=1e-5)
