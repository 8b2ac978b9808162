"""Per-channel loss functions and LossConfig against hand computations.

The losses are built through ``StepLossConfig`` so they see the same
normalisation and packing as in training.
"""

import itertools
import math

import numpy as np
import pytest
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

from fme.core.loss import StepLossConfig
from fme.core.loss_functions import LossConfig


@pytest.mark.parametrize(
    "type_, pointwise",
    [("MSE", lambda d: d**2), ("L1", np.abs)],
)
def test_pointwise_losses_match_hand_computation(type_, pointwise):
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    out = build(type=type_)(predict, target, step=0)
    expected = {
        n: pointwise(normalized(predict, n) - normalized(target, n)).mean()
        for n in NAMES
    }
    got = out.get_channel_losses()
    for n in NAMES:
        np.testing.assert_allclose(got[n].item(), expected[n], rtol=1e-12)
    np.testing.assert_allclose(
        out.total().item(), np.mean(list(expected.values())), rtol=1e-12
    )


def test_area_weighted_mse_matches_hand_computation():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    out = build(type="AreaWeightedMSE")(predict, target, step=0)
    area = cos_area()
    for n in NAMES:
        sq = (normalized(predict, n) - normalized(target, n)) ** 2
        per_sample = (sq * area).sum(axis=(1, 2)) / area.sum()
        np.testing.assert_allclose(
            out.get_channel_losses()[n].item(), per_sample.mean(), rtol=1e-6
        )


def test_area_weighted_mse_needs_gridded_ops():
    with pytest.raises(ValueError, match="AreaWeightedMSE"):
        StepLossConfig(type="AreaWeightedMSE").build(
            out_names=NAMES, normalizer=make_normalizer(), gridded_ops=None
        )


@pytest.mark.parametrize("p", [2, 3])
def test_lp_loss_is_relative_norm_per_sample_and_channel(p):
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    out = build(type="LpLoss", kwargs={"p": p})(predict, target, step=0)
    for n in NAMES:
        x, y = normalized(predict, n), normalized(target, n)
        ratios = [
            np.sum(np.abs(x[b] - y[b]) ** p) ** (1 / p)
            / np.sum(np.abs(y[b]) ** p) ** (1 / p)
            for b in range(B)
        ]
        np.testing.assert_allclose(
            out.get_channel_losses()[n].item(), np.mean(ratios), rtol=1e-12
        )


def brute_force_fair_crps(members: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = members.shape[0]
    skill = np.mean([np.abs(members[i] - y) for i in range(m)], axis=0)
    spread = sum(
        np.abs(members[i] - members[j])
        for i, j in itertools.product(range(m), range(m))
        if i != j
    )
    return skill - spread / (2 * m * (m - 1))


def test_ensemble_loss_is_fair_crps():
    m = 3
    predict, target = random_data(0, B, m, H, W), random_data(1, B, H, W)
    out = build(type="EnsembleLoss")(predict, target, step=0)
    for n in NAMES:
        x, y = normalized(predict, n), normalized(target, n)
        crps = np.stack([brute_force_fair_crps(x[b], y[b]) for b in range(B)])
        np.testing.assert_allclose(
            out.get_channel_losses()[n].item(), crps.mean(), rtol=1e-12
        )


def test_ensemble_energy_score_matches_brute_force():
    m = 3
    predict, target = random_data(0, B, m, H, W), random_data(1, B, H, W)
    kwargs = {"crps_weight": 0.5, "energy_score_weight": 2.0}
    out = build(type="EnsembleLoss", kwargs=kwargs)(predict, target, step=0)

    def rms(v):
        return np.sqrt(np.mean(v**2))

    for n in NAMES:
        x, y = normalized(predict, n), normalized(target, n)
        crps = np.mean([brute_force_fair_crps(x[b], y[b]) for b in range(B)])
        energy = np.mean(
            [
                np.mean([rms(x[b, i] - y[b]) for i in range(m)])
                - sum(rms(x[b, i] - x[b, j]) for i in range(m) for j in range(m))
                / (2 * m * (m - 1))
                for b in range(B)
            ]
        )
        np.testing.assert_allclose(
            out.get_channel_losses()[n].item(), 0.5 * crps + 2.0 * energy, rtol=1e-12
        )


def test_ensemble_loss_needs_two_members():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    with pytest.raises(ValueError, match="n_ensemble >= 2"):
        build(type="EnsembleLoss")(predict, target, step=0)


def test_deterministic_loss_averages_over_members():
    predict, target = random_data(0, B, 2, H, W), random_data(1, B, H, W)
    out = build(type="MSE")(predict, target, step=0)
    for n in NAMES:
        x, y = normalized(predict, n), normalized(target, n)
        expected = ((x - y[:, None]) ** 2).mean()
        np.testing.assert_allclose(
            out.get_channel_losses()[n].item(), expected, rtol=1e-12
        )


def test_nan_loss_is_nan():
    predict, target = random_data(0, B, H, W), random_data(1, B, H, W)
    assert math.isnan(build(type="NaN")(predict, target, step=0).total().item())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"type": "Huber"}, "allowed"),
        ({"type": "MSE", "kwargs": {"p": 2}}, "unknown key"),
        ({"type": "LpLoss", "kwargs": {"p": 0.5}}, "p must be >= 1"),
        ({"type": "LpLoss", "kwargs": {"p": "two"}}, "must be a number"),
        ({"type": "EnsembleLoss", "kwargs": {"crps_weight": -1.0}}, "crps_weight"),
        (
            {"type": "EnsembleLoss", "kwargs": {"crps_weight": 0.0}},
            "positive sum",
        ),
    ],
)
def test_loss_config_rejections(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)
    with pytest.raises(ValueError, match=match):
        StepLossConfig(**kwargs)
