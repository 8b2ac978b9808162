"""Our SFNO is ACE's function with ACE's parameter names and shapes.

The reference files were written by the released ``fme==2026.10.0``
(``scripts/make_ace_reference.py``): its network with random weights, an
input and its output.
"""

from pathlib import Path

import pytest
import torch

from fme.ace.models.registry import ModuleSelector

DATA = Path(__file__).resolve().parent / "data"
VARIANTS = sorted(p.stem.removeprefix("sfno_") for p in DATA.glob("sfno_*.pt"))


def _load(variant: str) -> dict:
    return torch.load(DATA / f"sfno_{variant}.pt", weights_only=True)


def _build(reference: dict) -> torch.nn.Module:
    return ModuleSelector(
        type="SphericalFourierNeuralOperatorNet", config=dict(reference["builder"])
    ).build(
        n_in_channels=reference["n_in"],
        n_out_channels=reference["n_out"],
        img_shape=tuple(reference["img_shape"]),
    )


def test_every_variant_family_has_a_reference_file():
    assert {
        "diagonal",
        "dhconv",
        "scale_factor_2",
        "spectral_layers_2",
        "no_pos_embed",
        "no_big_skip",
        "legendre_gauss",
        "equiangular",
        "equiangular_scale_factor_2",
        "layer_norm",
        "residual_filter_factor_2",
    } <= set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_names_and_shapes_as_ace(variant):
    reference = _load(variant)
    ours = _build(reference).state_dict()
    theirs = reference["state_dict"]
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        assert ours[name].shape == value.shape, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_ace_weights_give_ace_output(variant):
    reference = _load(variant)
    net = _build(reference)
    net.load_state_dict(reference["state_dict"], strict=True)
    with torch.no_grad():
        out = net(reference["input"])
    expected = reference["output"]
    rel = (out - expected).norm() / expected.norm()
    assert rel < 1e-5, rel
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["diagonal", "dhconv", "scale_factor_2"])
def test_weights_move_back_to_ace_unchanged(variant):
    reference = _load(variant)
    net = _build(reference)
    net.load_state_dict(reference["state_dict"])
    saved = net.state_dict()
    for name, value in reference["state_dict"].items():
        assert torch.equal(saved[name], value), name
    # the loaded spectral weight keeps its mode-major memory (the fast path)
    weight = net.blocks[0].filter.filter.weight
    assert not weight.is_contiguous()


# ACE's SphericalFourierNeuralOperatorBuilder fields and defaults
# (fme==2026.10.0, fme/ace/registry/sfno.py).
ACE_BUILDER_DEFAULTS = {
    "spectral_transform": "sht",
    "filter_type": "linear",
    "operator_type": "diagonal",
    "scale_factor": 1,
    "residual_filter_factor": 1,
    "embed_dim": 256,
    "num_layers": 12,
    "hard_thresholding_fraction": 1.0,
    "normalization_layer": "instance_norm",
    "use_mlp": True,
    "activation_function": "gelu",
    "encoder_layers": 1,
    "pos_embed": True,
    "big_skip": True,
    "rank": 1.0,
    "factorization": None,
    "separable": False,
    "complex_network": True,
    "complex_activation": "real",
    "spectral_layers": 1,
    "checkpointing": 0,
    "data_grid": "legendre-gauss",
}


def test_every_ace_builder_key_with_ace_defaults():
    config = ModuleSelector(type="SphericalFourierNeuralOperatorNet").module_config
    for key, default in ACE_BUILDER_DEFAULTS.items():
        assert getattr(config, key) == default, key


@pytest.mark.parametrize(
    "key, value, supported",
    [
        ("filter_type", "non-linear", "linear"),
        ("spectral_transform", "fft", "sht"),
        ("factorization", "cp", "null"),
        ("separable", True, "false"),
    ],
)
def test_ace_values_not_implemented_are_refused_naming_key_and_support(
    key, value, supported
):
    with pytest.raises(ValueError, match=f"not supported here: {key}=.*{supported}"):
        ModuleSelector(type="SphericalFourierNeuralOperatorNet", config={key: value})


@pytest.mark.parametrize("checkpointing", [1, 2, 3])
def test_activation_checkpointing_levels_keep_the_function_and_gradients(
    checkpointing,
):
    reference = _load("dhconv")
    plain, checkpointed = (
        _build(reference),
        _build(
            {
                **reference,
                "builder": {**reference["builder"], "checkpointing": checkpointing},
            }
        ),
    )
    for net in (plain, checkpointed):
        net.load_state_dict(reference["state_dict"])
    x = reference["input"]
    plain(x).square().sum().backward()
    checkpointed(x).square().sum().backward()
    for (name, a), b in zip(
        plain.named_parameters(), checkpointed.parameters(), strict=True
    ):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
