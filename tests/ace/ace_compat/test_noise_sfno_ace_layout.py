"""NoiseConditionedSFNO (ACE2S) is ACE's function with ACE's names and shapes.

The reference files (``scripts/make_ace_reference.py``) hold the released
network's output for noise drawn from torch's global generator seeded with
``noise_seed`` right before the call: our network draws the same noise.
"""

from pathlib import Path

import pytest
import torch

from fme.ace.models.registry import ModuleSelector

DATA = Path(__file__).resolve().parent / "data"
VARIANTS = sorted(
    p.stem.removeprefix("noise_sfno_") for p in DATA.glob("noise_sfno_*.pt")
)


def _load(variant: str) -> dict:
    return torch.load(DATA / f"noise_sfno_{variant}.pt", weights_only=True)


def _build(reference: dict) -> torch.nn.Module:
    return ModuleSelector(
        type="NoiseConditionedSFNO", config=dict(reference["builder"])
    ).build(
        n_in_channels=reference["n_in"],
        n_out_channels=reference["n_out"],
        img_shape=tuple(reference["img_shape"]),
    )


def test_variants_cover_noise_types_and_options():
    assert len(VARIANTS) >= 4


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_names_and_shapes_and_same_output_with_the_same_noise(variant):
    reference = _load(variant)
    net = _build(reference)
    ours = net.state_dict()
    theirs = reference["state_dict"]
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name
    net.load_state_dict(theirs)
    torch.manual_seed(reference["noise_seed"])
    with torch.no_grad():
        out = net(reference["input"])
    expected = reference["output"]
    rel = (out - expected).norm() / expected.norm()
    assert rel < 1e-5, rel


def test_fresh_noise_on_every_call():
    reference = _load("gaussian")
    net = _build(reference)
    net.load_state_dict(reference["state_dict"])
    with torch.no_grad():
        first, second = net(reference["input"]), net(reference["input"])
    assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize(
    "key, value",
    [
        ("local_blocks", [0]),
        ("operator_type", "diagonal"),
        ("spectral_ratio", 0.5),
        ("label_embed_dim", 2),
        ("filter_type", "makani-linear"),
    ],
)
def test_unsupported_ace_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"not supported here: {key}"):
        ModuleSelector(type="NoiseConditionedSFNO", config={key: value})
