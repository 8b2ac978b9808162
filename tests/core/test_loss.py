"""WeightedMappingLoss, LossOutput and StepLoss against hand computations."""

import math

import numpy as np
import pytest
import torch
from loss_builders import (
    NAMES,
    B,
    H,
    W,
    build,
    cos_area,
    make_normalizer,
    normalized,
    random_data,
)

from fme.core import loss as loss_module
from fme.core import loss_functions
from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.loss import LossOutput, StepLossConfig


def test_nan_targets_are_masked_and_empty_channel_is_inactive():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    target["a"][0, 1, 2] = float("nan")
    target["a"][1, 0, :] = float("nan")
    target["b_1"][:] = float("nan")
    out = build(type="MSE")(predict, target, step=0)
    sq = (normalized(predict, "a") - normalized(target, "a")) ** 2
    expected_a = np.nanmean(sq)
    expected_b0 = np.mean((normalized(predict, "b_0") - normalized(target, "b_0")) ** 2)
    channel = out.get_channel_losses()
    assert set(channel) == {"a", "b_0"}
    np.testing.assert_allclose(channel["a"].item(), expected_a, rtol=1e-12)
    np.testing.assert_allclose(
        out.total().item(), (expected_a + expected_b0) / 2, rtol=1e-12
    )
    assert out.active.tolist() == [True, True, False]


def test_nan_target_gives_finite_gradient():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    target["a"][0, 1, 2] = float("nan")
    predict = {k: v.requires_grad_() for k, v in predict.items()}
    build(type="LpLoss")(predict, target, step=0).total().backward()
    assert torch.isfinite(predict["a"].grad).all()
    assert predict["a"].grad[0, 1, 2] == 0


def test_sample_data_mask_divides_by_valid_samples():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    loss = build(type="MSE")
    masked = loss(predict, target, step=0, data_mask=torch.tensor([0.0, 1.0]))
    only_second = loss(
        {k: v[1:] for k, v in predict.items()},
        {k: v[1:] for k, v in target.items()},
        step=0,
    )
    np.testing.assert_allclose(masked.total().item(), only_second.total().item())
    unmasked = loss(predict, target, 0).total().item()
    assert masked.total().item() != pytest.approx(unmasked)


def test_channel_data_mask():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    out = build(type="L1")(predict, target, step=0, data_mask=mask)
    d = {n: np.abs(normalized(predict, n) - normalized(target, n)) for n in NAMES}
    expected_a = d["a"][0].mean()
    expected_b0 = d["b_0"].mean()
    assert set(out.get_channel_losses()) == {"a", "b_0"}
    np.testing.assert_allclose(
        out.total().item(), (expected_a + expected_b0) / 2, rtol=1e-12
    )


def test_bad_data_mask_shape():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    with pytest.raises(ValueError, match="data_mask"):
        build()(predict, target, step=0, data_mask=torch.ones(B, 5))


def test_per_variable_weights_multiply_channel_losses():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    plain = build(type="MSE")(predict, target, step=0).get_channel_losses()
    weights = {"a": 2.0, "b_1": 0.0}
    out = build(type="MSE", weights=weights)(predict, target, step=0)
    expected = (2.0 * plain["a"] + plain["b_0"] + 0.0) / 3
    np.testing.assert_allclose(out.total().item(), expected.item(), rtol=1e-12)
    np.testing.assert_allclose(
        out.get_channel_losses()["a"].item(), 2 * plain["a"].item(), rtol=1e-12
    )


def test_unknown_weight_name_fails_at_build():
    with pytest.raises(ValueError, match="not output variables"):
        build(weights={"nope": 1.0})


@pytest.mark.parametrize("step, c", [(0, 0.5), (3, 0.5), (5, 0.0)])
def test_step_decay(step, c):
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    base = build(type="MSE")(predict, target, step=0).total().item()
    out = build(type="MSE", sqrt_loss_step_decay_constant=c)(predict, target, step)
    np.testing.assert_allclose(out.total().item(), base / math.sqrt(1 + c * step))


def test_global_mean_term():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    loss = build(
        type="MSE",
        global_mean_type="LpLoss",
        global_mean_weight=0.3,
        weights={"b_0": 2.0},
    )
    out = loss(predict, target, step=0)
    area = cos_area() / cos_area().sum()
    w = np.array([1.0, 2.0, 1.0])
    ratios = []
    for b in range(B):
        gm_x = np.array([(normalized(predict, n)[b] * area).sum() for n in NAMES])
        gm_y = np.array([(normalized(target, n)[b] * area).sum() for n in NAMES])
        ratios.append(
            np.sqrt(np.sum(w * (gm_x - gm_y) ** 2)) / np.sqrt(np.sum(w * gm_y**2))
        )
    expected = 0.3 * np.mean(ratios)
    terms = out.terms()
    assert set(terms) == {"main", "global_mean"}
    np.testing.assert_allclose(terms["global_mean"].item(), expected, rtol=1e-6)
    main_only = build(type="MSE", weights={"b_0": 2.0})(predict, target, 0).total()
    np.testing.assert_allclose(terms["main"].item(), main_only.item(), rtol=1e-12)
    np.testing.assert_allclose(
        out.total().item(), main_only.item() + expected, rtol=1e-6
    )


def test_global_mean_needs_gridded_ops():
    with pytest.raises(ValueError, match="global_mean_type"):
        StepLossConfig(global_mean_type="LpLoss").build(
            out_names=NAMES, normalizer=make_normalizer(), gridded_ops=None
        )


def test_missing_variable_is_an_error():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    del predict["b_0"]
    with pytest.raises(ValueError, match="b_0"):
        build()(predict, target, step=0)


def test_loss_output_total_over_active_channels():
    out = LossOutput(
        names=["x", "y", "z"],
        channel_losses=torch.tensor([1.0, 0.0, 5.0]),
        active=torch.tensor([True, False, True]),
        extra_terms={"global_mean": torch.tensor(0.5)},
    )
    assert out.total().item() == pytest.approx(3.5)
    assert set(out.get_channel_losses()) == {"x", "z"}
    weighted = out.with_term_weights({"main": 2.0, "global_mean": 4.0})
    assert weighted.total().item() == pytest.approx(8.0)
    assert out.scaled(0.5).total().item() == pytest.approx(1.75)


def test_ace_style_config_loads_strictly():
    data = {
        "type": "LpLoss",
        "kwargs": {"p": 2},
        "global_mean_type": "LpLoss",
        "global_mean_kwargs": {"p": 2},
        "global_mean_weight": 0.5,
        "weights": {"a": 2.0},
        "sqrt_loss_step_decay_constant": 0.1,
    }
    config = from_dict_strict(StepLossConfig, data)
    assert config.type == "LpLoss" and config.weights == {"a": 2.0}
    with pytest.raises(ConfigError, match="typo"):
        from_dict_strict(StepLossConfig, {**data, "typo": 1})
    with pytest.raises(ConfigError, match="allowed"):
        from_dict_strict(StepLossConfig, {**data, "type": "Huber"})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"global_mean_type": "MSE"}, "global_mean_type"),
        ({"global_mean_kwargs": {"p": 2}}, "global_mean_type is null"),
        (
            {"global_mean_type": "LpLoss", "global_mean_kwargs": {"q": 1}},
            "unknown key",
        ),
        ({"global_mean_weight": -1.0}, "global_mean_weight"),
        ({"weights": {"a": -1.0}}, "weights"),
        ({"sqrt_loss_step_decay_constant": -0.1}, "sqrt_loss_step_decay_constant"),
    ],
)
def test_step_loss_config_rejections(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepLossConfig(**kwargs)


def test_requires_ensemble():
    assert StepLossConfig(type="EnsembleLoss").requires_ensemble
    assert not StepLossConfig(type="MSE").requires_ensemble
    assert build(type="EnsembleLoss").requires_ensemble


def test_loss_config_is_reexported_from_loss():
    assert loss_module.LossConfig is loss_functions.LossConfig
