"""Per-point loss scalings: hand values, detachment, use inside losses."""

import numpy as np
import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.gridded_ops import LatLonOperations
from fme.core.loss import StepLossConfig
from fme.core.loss_scaling import LossScalingConfig
from fme.core.normalizer import StandardNormalizer

LATS = [-60.0, 0.0, 45.0]
H, W = 3, 4
NAMES = ["t_0", "t_1", "t_2", "ps"]


def make_ops() -> LatLonOperations:
    return LatLonOperations.from_latitudes(torch.tensor(LATS), W)


def unit_normalizer(names=NAMES) -> StandardNormalizer:
    return StandardNormalizer(
        means={n: torch.tensor(0.0) for n in names},
        stds={n: torch.tensor(1.0) for n in names},
    )


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_area_weights_are_cos_latitude_with_mean_one():
    scaling = LossScalingConfig(type="area").build(NAMES, make_ops())
    x = torch.zeros(2, 4, H, W)
    weights = scaling(x, x)
    cos = np.cos(np.deg2rad(LATS))
    expected = np.repeat((cos / cos.mean())[:, None], W, axis=1)
    np.testing.assert_allclose(weights.squeeze().numpy(), expected, rtol=1e-6)


def test_area_needs_gridded_ops():
    with pytest.raises(ValueError, match="'area'"):
        LossScalingConfig(type="area").build(NAMES, None)


def test_level_profile_weights():
    scaling = LossScalingConfig(type="level_profile", decay=0.5).build(NAMES, None)
    x = torch.zeros(2, 4, H, W)
    weights = scaling(x, x)
    assert weights.shape == (1, 4, 1, 1)
    assert weights.flatten().tolist() == [1.0, 0.5, 0.25, 1.0]


def test_level_profile_channel_count_mismatch():
    scaling = LossScalingConfig(type="level_profile", decay=0.5).build(NAMES, None)
    x = torch.zeros(2, 3, H, W)
    with pytest.raises(ValueError, match="4 channels"):
        scaling(x, x)


@pytest.mark.parametrize("reference", ["target", "prediction"])
def test_magnitude_weights(reference):
    scaling = LossScalingConfig(type="magnitude", reference=reference, floor=0.5).build(
        NAMES, None
    )
    predicted = torch.tensor([2.0, -0.1, 0.0, -4.0]).reshape(1, 4, 1, 1)
    target = torch.tensor([-0.2, 1.0, 0.5, 8.0]).reshape(1, 4, 1, 1)
    weights = scaling(predicted, target).flatten().tolist()
    if reference == "target":
        assert weights == pytest.approx([2.0, 1.0, 2.0, 0.125])
    else:
        assert weights == pytest.approx([0.5, 2.0, 2.0, 0.25])


def test_magnitude_defaults():
    scaling = LossScalingConfig(type="magnitude").build(NAMES, None)
    target = torch.tensor([0.01, 4.0]).reshape(1, 2, 1, 1)
    assert scaling(torch.zeros_like(target), target).flatten().tolist() == (
        pytest.approx([10.0, 0.25])
    )


def test_weights_are_detached():
    scaling = LossScalingConfig(type="magnitude", reference="prediction").build(
        NAMES, None
    )
    predicted = randn(0, 2, 4, H, W).requires_grad_()
    assert not scaling(predicted, predicted.detach()).requires_grad


def test_gradient_does_not_flow_through_magnitude_weights():
    floor = 0.3
    scaling = LossScalingConfig(type="magnitude", reference="prediction", floor=floor)
    config = StepLossConfig(type="MSE", scaling=[scaling])
    loss = config.build(out_names=NAMES, normalizer=unit_normalizer())
    predict = {n: randn(i, 2, H, W).requires_grad_() for i, n in enumerate(NAMES)}
    target = {n: randn(10 + i, 2, H, W) for i, n in enumerate(NAMES)}
    loss(predict, target, step=0).total().backward()
    n_points = 2 * H * W
    for n in NAMES:
        p, t = predict[n].detach(), target[n]
        w = 1.0 / p.abs().clamp(min=floor)
        expected = 2 * w * (p - t) / n_points / len(NAMES)
        torch.testing.assert_close(predict[n].grad, expected)


def test_mse_with_area_scaling_equals_area_weighted_mse():
    ops = make_ops()
    predict = {n: randn(i, 2, H, W) for i, n in enumerate(NAMES)}
    target = {n: randn(10 + i, 2, H, W) for i, n in enumerate(NAMES)}
    scaled = StepLossConfig(type="MSE", scaling=[LossScalingConfig(type="area")])
    area = StepLossConfig(type="AreaWeightedMSE")
    kw = {"out_names": NAMES, "normalizer": unit_normalizer(), "gridded_ops": ops}
    a = scaled.build(**kw)(predict, target, 0).total()
    b = area.build(**kw)(predict, target, 0).total()
    torch.testing.assert_close(a, b)
    plain = StepLossConfig(type="MSE").build(**kw)(predict, target, 0).total()
    assert not torch.isclose(a, plain)


def test_lp_loss_with_scaling_is_weighted_norm():
    names = ["t_0", "t_1"]
    config = StepLossConfig(
        type="LpLoss", scaling=[LossScalingConfig(type="level_profile", decay=0.5)]
    )
    loss = config.build(out_names=names, normalizer=unit_normalizer(names))
    predict = {n: randn(i, 2, H, W) for i, n in enumerate(names)}
    target = {n: randn(10 + i, 2, H, W) for i, n in enumerate(names)}
    # a constant weight per channel cancels in the relative norm
    scaled = loss(predict, target, 0).total()
    plain = StepLossConfig(type="LpLoss").build(
        out_names=names, normalizer=unit_normalizer(names)
    )(predict, target, 0)
    torch.testing.assert_close(scaled, plain.total())


def test_lp_loss_with_magnitude_scaling_hand_value():
    names = ["ps"]
    config = StepLossConfig(
        type="LpLoss",
        scaling=[LossScalingConfig(type="magnitude", floor=0.5)],
    )
    loss = config.build(out_names=names, normalizer=unit_normalizer(names))
    x = torch.tensor([[[1.0, 2.0]]])
    y = torch.tensor([[[0.25, -4.0]]])
    w = np.array([2.0, 0.25])
    d = np.array([0.75, 6.0])
    expected = np.sqrt(np.sum(w * d**2)) / np.sqrt(np.sum(w * np.array([0.0625, 16.0])))
    got = loss({"ps": x}, {"ps": y}, 0).total().item()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_crps_with_scaling_multiplies_integrand():
    names = ["ps"]
    scaling = [LossScalingConfig(type="magnitude", floor=0.5)]
    config = StepLossConfig(type="EnsembleLoss", scaling=scaling)
    loss = config.build(out_names=names, normalizer=unit_normalizer(names))
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [batch, member, lat, lon]
    y = torch.tensor([[[0.25, -4.0]]])
    crps = np.array([(0.75 + 2.75) / 2 - 2 / 2, (6.0 + 4.0) / 2 - 2 / 2])
    expected = np.mean(np.array([2.0, 0.25]) * crps)
    got = loss({"ps": x}, {"ps": y}, 0).total().item()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_energy_score_rejects_scaling_at_build():
    config = StepLossConfig(
        type="EnsembleLoss",
        kwargs={"energy_score_weight": 1.0},
        scaling=[LossScalingConfig(type="magnitude")],
    )
    with pytest.raises(ValueError, match="not supported"):
        config.build(out_names=NAMES, normalizer=unit_normalizer())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"type": "cosine"}, "allowed"),
        ({"type": "area", "decay": 0.5}, "'decay' only applies"),
        ({"type": "area", "floor": 0.5}, "'floor' only applies"),
        ({"type": "level_profile", "decay": 0.5, "reference": "target"}, "reference"),
        ({"type": "level_profile"}, "needs field 'decay'"),
        ({"type": "level_profile", "decay": 0.0}, "needs field 'decay'"),
        ({"type": "magnitude", "reference": "input"}, "allowed"),
        ({"type": "magnitude", "floor": 0.0}, "'floor' must be > 0"),
    ],
)
def test_config_rejections(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossScalingConfig(**kwargs)


def test_strict_load():
    config = from_dict_strict(LossScalingConfig, {"type": "magnitude", "floor": 0.2})
    assert config.floor == 0.2
    with pytest.raises(ConfigError, match="decai"):
        from_dict_strict(LossScalingConfig, {"type": "level_profile", "decai": 0.5})
