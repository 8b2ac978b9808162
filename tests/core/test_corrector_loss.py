"""StepOutputLoss and the corrector-loss configs."""

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.corrector.loss import (
    CorrectorLossConfig,
    CorrectorRegularizationConfig,
    PreCorrectorOptimizationConfig,
    build_step_output_loss,
)
from fme.core.corrector.step_output_loss import StepOutputLoss
from fme.core.gridded_ops import LatLonOperations
from fme.core.loss import StepLossConfig
from fme.core.loss_functions import LossConfig
from fme.core.normalizer import StandardNormalizer
from fme.core.tensors import TensorDict, TensorMapping

NAMES = ["a", "b_0", "b_1", "c"]
MEANS = {"a": 1.0, "b_0": -2.0, "b_1": 0.5, "c": 3.0}
STDS = {"a": 2.0, "b_0": 0.5, "b_1": 4.0, "c": 1.5}
CORRECTED = ["b_0", "b_1", "c"]
B, H, W = 2, 3, 4


@dataclasses.dataclass
class FakeStepOutput:
    output: TensorDict
    uncorrected: TensorDict = dataclasses.field(default_factory=dict)
    nearest_preimage: Callable[[TensorMapping], TensorDict] | None = None


def make_normalizer() -> StandardNormalizer:
    return StandardNormalizer(
        means={k: torch.tensor(v) for k, v in MEANS.items()},
        stds={k: torch.tensor(v) for k, v in STDS.items()},
    )


def randn(seed: int, *shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def make_step(batch: int = B, corrected=CORRECTED) -> FakeStepOutput:
    output = {n: randn(i, batch, H, W) for i, n in enumerate(NAMES)}
    uncorrected = {
        n: output[n] + randn(20 + i, batch, H, W) for i, n in enumerate(NAMES)
    }
    return FakeStepOutput(output, {n: uncorrected[n] for n in corrected})


def make_target(batch: int = B) -> TensorDict:
    return {n: randn(40 + i, batch, H, W) for i, n in enumerate(NAMES)}


def build(
    corrector_loss: CorrectorLossConfig | None,
    step_loss: StepLossConfig | None = None,
    n_ensemble: int = 1,
) -> StepOutputLoss:
    normalizer = make_normalizer()
    main = (step_loss or StepLossConfig()).build(out_names=NAMES, normalizer=normalizer)
    return build_step_output_loss(
        corrector_loss,
        step_loss=main,
        normalizer=normalizer,
        out_names=NAMES,
        n_ensemble=n_ensemble,
    )


def hand_mse(predict: TensorDict, target: TensorDict) -> float:
    return np.mean(
        [(((predict[n] - target[n]) / STDS[n]) ** 2).mean().item() for n in NAMES]
    )


def precorrector(exclude=()) -> CorrectorLossConfig:
    return CorrectorLossConfig(
        precorrector_optimization=PreCorrectorOptimizationConfig(list(exclude))
    )


def regularization(weight: float = 1.0) -> CorrectorLossConfig:
    return CorrectorLossConfig(
        regularization=CorrectorRegularizationConfig(weight=weight)
    )


def test_pass_through_equals_step_loss_on_corrected_output():
    step, target = make_step(), make_target()
    loss = build(None)
    result = loss(step, target, step=0)
    assert result.regularization is None
    assert not loss.needs_uncorrected_grad
    np.testing.assert_allclose(result.total().item(), hand_mse(step.output, target))
    assert set(result.terms()) == {"main"}


def test_precorrector_swaps_prediction_except_excluded():
    step, target = make_step(), make_target()
    result = build(precorrector(exclude=["c"]))(step, target, step=0)
    expected_prediction = {
        "a": step.output["a"],
        "b_0": step.uncorrected["b_0"],
        "b_1": step.uncorrected["b_1"],
        "c": step.output["c"],
    }
    np.testing.assert_allclose(
        result.total().item(), hand_mse(expected_prediction, target), rtol=1e-12
    )
    assert result.regularization is None


def test_prefix_exclusion_keeps_all_levels_corrected():
    step, target = make_step(), make_target()
    result = build(precorrector(exclude=["b_"]))(step, target, step=0)
    expected_prediction = {**step.output, "c": step.uncorrected["c"]}
    np.testing.assert_allclose(
        result.total().item(), hand_mse(expected_prediction, target), rtol=1e-12
    )


def test_step_output_not_mutated():
    step, target = make_step(), make_target()
    output_before = dict(step.output)
    uncorrected_before = {k: v.clone() for k, v in step.uncorrected.items()}
    values_before = {k: v.clone() for k, v in step.output.items()}
    config = CorrectorLossConfig(
        precorrector_optimization=PreCorrectorOptimizationConfig(),
        regularization=CorrectorRegularizationConfig(),
    )
    build(config)(step, target, step=0)
    assert step.output.keys() == output_before.keys()
    for k, v in step.output.items():
        assert v is output_before[k]
        torch.testing.assert_close(v, values_before[k])
    for k, v in step.uncorrected.items():
        torch.testing.assert_close(v, uncorrected_before[k])


def analytic_penalty(step: FakeStepOutput) -> float:
    return np.mean(
        [
            (((step.output[n] - step.uncorrected[n]) / STDS[n]) ** 2).mean().item()
            for n in step.uncorrected
        ]
    )


def test_regularization_is_analytic_corrected_channel_mean():
    step, target = make_step(), make_target()
    result = build(regularization(weight=0.7))(step, target, step=0)
    penalty = analytic_penalty(step)
    np.testing.assert_allclose(result.regularization.item(), 0.7 * penalty, rtol=1e-12)
    # the main loss still scores the corrected output
    np.testing.assert_allclose(
        result.main.total().item(), hand_mse(step.output, target), rtol=1e-12
    )
    np.testing.assert_allclose(
        result.total().item(),
        result.main.total().item() + result.regularization.item(),
        rtol=1e-12,
    )
    assert set(result.regularization_output.get_channel_losses()) == set(CORRECTED)


def test_corrected_channel_scale_vs_all_channel_mean():
    corrected = ["b_0", "b_1"]
    step, target = make_step(corrected=corrected), make_target()
    penalty = build(regularization())(step, target, step=0).regularization.item()
    per_channel = [
        (((step.output[n] - step.uncorrected[n]) / STDS[n]) ** 2).mean().item()
        for n in corrected
    ]
    # uncorrected channels have zero correction; an all-channel mean counts them
    all_channel_mean = sum(per_channel) / len(NAMES)
    np.testing.assert_allclose(penalty, sum(per_channel) / len(corrected), rtol=1e-12)
    np.testing.assert_allclose(
        all_channel_mean, penalty * len(corrected) / len(NAMES), rtol=1e-12
    )
    assert penalty > all_channel_mean


def test_regularization_without_corrections_is_zero():
    step, target = make_step(corrected=[]), make_target()
    result = build(regularization())(step, target, step=0)
    assert result.regularization.item() == 0.0


def test_regularization_has_no_step_decay_but_main_does():
    step, target = make_step(), make_target()
    loss = build(regularization(), StepLossConfig(sqrt_loss_step_decay_constant=1.0))
    first, later = loss(step, target, step=0), loss(step, target, step=3)
    np.testing.assert_allclose(first.regularization.item(), later.regularization.item())
    np.testing.assert_allclose(
        later.main.total().item(), first.main.total().item() / 2.0, rtol=1e-12
    )


def test_regularization_respects_sample_mask():
    step, target = make_step(), make_target()
    mask = torch.tensor([1.0, 0.0])
    result = build(regularization())(step, target, step=0, data_mask=mask)
    first = FakeStepOutput(
        {k: v[:1] for k, v in step.output.items()},
        {k: v[:1] for k, v in step.uncorrected.items()},
    )
    np.testing.assert_allclose(
        result.regularization.item(), analytic_penalty(first), rtol=1e-12
    )


def test_penalty_gradient_is_analytic():
    step, target = make_step(), make_target()
    for d in (step.output, step.uncorrected):
        for v in d.values():
            v.requires_grad_()
    weight = 0.4
    result = build(regularization(weight))(step, target, step=0)
    result.regularization.backward()
    n_points = B * H * W
    for n in CORRECTED:
        correction = (step.output[n] - step.uncorrected[n]).detach()
        expected = weight / len(CORRECTED) * 2 * correction / STDS[n] ** 2 / n_points
        torch.testing.assert_close(step.output[n].grad, expected)
        torch.testing.assert_close(step.uncorrected[n].grad, -expected)
    assert step.output["a"].grad is None


@pytest.mark.parametrize(
    "config, expected",
    [
        (None, False),
        (precorrector(), True),
        (regularization(), True),
        (
            CorrectorLossConfig(
                precorrector_optimization=PreCorrectorOptimizationConfig(),
                regularization=CorrectorRegularizationConfig(),
            ),
            True,
        ),
    ],
)
def test_needs_uncorrected_grad(config, expected):
    assert build(config).needs_uncorrected_grad is expected


def test_combined_features():
    step, target = make_step(), make_target()
    config = CorrectorLossConfig(
        precorrector_optimization=PreCorrectorOptimizationConfig(["a"]),
        regularization=CorrectorRegularizationConfig(weight=2.0),
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = build(config)(step, target, step=0)
    main = hand_mse({**step.output, **step.uncorrected}, target)
    np.testing.assert_allclose(result.main.total().item(), main, rtol=1e-12)
    np.testing.assert_allclose(
        result.total().item(), main + 2.0 * analytic_penalty(step), rtol=1e-12
    )
    terms = result.terms()
    assert set(terms) == {"main", "corrector_regularization"}
    np.testing.assert_allclose(
        sum(terms.values()).item(), result.total().item(), rtol=1e-12
    )


def test_ensemble_unfolding_is_sample_major():
    n_ens = 2
    step, target = make_step(batch=B * n_ens), make_target()
    loss = build(None, StepLossConfig(type="EnsembleLoss"), n_ensemble=n_ens)
    result = loss(step, target, step=0)
    expected = []
    for n in NAMES:
        x = step.output[n].numpy() / STDS[n]
        y = target[n].numpy() / STDS[n]
        crps = []
        for b in range(B):
            m0, m1 = x[b * n_ens], x[b * n_ens + 1]
            crps.append(
                (np.abs(m0 - y[b]) + np.abs(m1 - y[b])) / 2 - np.abs(m0 - m1) / 2
            )
        expected.append(np.mean(crps))
    np.testing.assert_allclose(result.total().item(), np.mean(expected), rtol=1e-12)


def test_ensemble_regularization_averages_members():
    n_ens = 2
    step, target = make_step(batch=B * n_ens), make_target()
    result = build(regularization(), n_ensemble=n_ens)(step, target, step=0)
    np.testing.assert_allclose(
        result.regularization.item(), analytic_penalty(step), rtol=1e-12
    )


def test_wrong_ensemble_batch_size():
    step, target = make_step(batch=3), make_target()
    with pytest.raises(ValueError, match="n_ensemble"):
        build(None, n_ensemble=2)(step, target, step=0)


def test_ensemble_loss_needs_two_members_at_build():
    with pytest.raises(ValueError, match="n_ensemble >= 2"):
        build(None, StepLossConfig(type="EnsembleLoss"), n_ensemble=1)


def test_unmatched_exclusion_warns_exactly_once():
    step, target = make_step(), make_target()
    loss = build(precorrector(exclude=["a", "c"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(make_step(corrected=[]), target, step=0)  # nothing corrected yet
        for i in range(3):
            loss(step, target, step=i)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "['a']" in messages[0]


def test_matched_exclusions_do_not_warn():
    step, target = make_step(), make_target()
    loss = build(precorrector(exclude=["b", "c"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(step, target, step=0)
    assert caught == []


def test_exclusion_matching_no_output_fails_at_build():
    with pytest.raises(ValueError, match="match no output variable"):
        build(precorrector(exclude=["tyop"]))


def test_term_weights_replace_configured_weights():
    step, target = make_step(), make_target()
    loss = build(regularization(weight=0.5), StepLossConfig())
    plain = loss(step, target, step=0)
    raw = plain.raw_terms()
    np.testing.assert_allclose(
        raw["corrector_regularization"].item(), analytic_penalty(step), rtol=1e-12
    )
    weighted = loss(
        step,
        target,
        step=0,
        term_weights={"main": 3.0, "corrector_regularization": torch.tensor(0.1)},
    )
    terms = weighted.terms()
    np.testing.assert_allclose(
        terms["main"].item(), 3.0 * raw["main"].item(), rtol=1e-12
    )
    # the given weight replaces the configured 0.5
    np.testing.assert_allclose(
        terms["corrector_regularization"].item(),
        0.1 * analytic_penalty(step),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        weighted.total().item(), sum(terms.values()).item(), rtol=1e-12
    )
    assert loss.term_names == ["main", "corrector_regularization"]
    with pytest.raises(ValueError, match="global_mean"):
        loss(step, target, step=0, term_weights={"global_mean": 1.0})


def test_base_term_weights_reproduce_default():
    ops = LatLonOperations.from_latitudes(torch.tensor([-30.0, 0.0, 30.0]), W)
    normalizer = make_normalizer()
    step_loss = StepLossConfig(
        global_mean_type="LpLoss", global_mean_weight=0.25
    ).build(out_names=NAMES, normalizer=normalizer, gridded_ops=ops)
    loss = regularization(weight=0.5).build(
        step_loss=step_loss, normalizer=normalizer, out_names=NAMES
    )
    assert loss.base_term_weights == {
        "main": 1.0,
        "global_mean": 0.25,
        "corrector_regularization": 0.5,
    }
    step, target = make_step(), make_target()
    plain = loss(step, target, step=2)
    same = loss(step, target, step=2, term_weights=loss.base_term_weights)
    for name, value in plain.terms().items():
        np.testing.assert_allclose(value.item(), same.terms()[name].item())
        np.testing.assert_allclose(
            value.item(),
            loss.base_term_weights[name] * plain.raw_terms()[name].item(),
            rtol=1e-12,
        )
    doubled = loss(step, target, step=2, term_weights={"global_mean": 0.5})
    np.testing.assert_allclose(
        doubled.terms()["global_mean"].item(),
        2 * plain.terms()["global_mean"].item(),
        rtol=1e-12,
    )


def test_correction_rms_even_without_regularization():
    step = make_step()
    rms = build(None).correction_rms(step)
    assert set(rms) == set(CORRECTED)
    for n in CORRECTED:
        correction = (step.output[n] - step.uncorrected[n]) / STDS[n]
        np.testing.assert_allclose(
            rms[n].item(), np.sqrt((correction.numpy() ** 2).mean()), rtol=1e-12
        )
        assert not rms[n].requires_grad


# ---------------------------------------------------------------- configs


def test_both_none_is_an_error():
    with pytest.raises(ValueError, match="precorrector_optimization and/or"):
        CorrectorLossConfig()


def test_precorrector_target_names_allowed_values():
    with pytest.raises(ValueError, match=r"allowed: \['raw', 'inverse'\]"):
        PreCorrectorOptimizationConfig(target="invrse")
    assert PreCorrectorOptimizationConfig(target="inverse").eta == 1.0


@pytest.mark.parametrize("eta", [0.0, -0.5, 1.5])
def test_precorrector_eta_must_be_in_unit_interval(eta):
    with pytest.raises(ValueError, match=r"eta must be in \(0, 1\]"):
        PreCorrectorOptimizationConfig(target="inverse", eta=eta)


def test_precorrector_eta_only_for_inverse():
    with pytest.raises(ValueError, match="eta only applies to target 'inverse'"):
        PreCorrectorOptimizationConfig(eta=0.5)


def test_inverse_target_strict_load_and_needs_inverse():
    config = from_dict_strict(
        CorrectorLossConfig,
        {"precorrector_optimization": {"target": "inverse", "eta": 0.5}},
    )
    assert config.precorrector_optimization.eta == 0.5
    assert config.needs_corrector_inverse
    assert not precorrector().needs_corrector_inverse
    assert not regularization().needs_corrector_inverse
    with pytest.raises(ConfigError, match="allowed"):
        from_dict_strict(
            CorrectorLossConfig, {"precorrector_optimization": {"target": "x"}}
        )


@pytest.mark.parametrize("type_", ["EnsembleLoss", "NaN", "LpLoss"])
def test_regularization_rejects_loss_types(type_):
    with pytest.raises(ValueError, match="regularization.loss.type"):
        CorrectorRegularizationConfig(loss=LossConfig(type=type_))


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_regularization_rejects_non_positive_weight(weight):
    with pytest.raises(ValueError, match="regularization.weight"):
        CorrectorRegularizationConfig(weight=weight)


def test_strict_load():
    data = {
        "precorrector_optimization": {"exclude_names_and_prefixes": ["a"]},
        "regularization": {"loss": {"type": "L1", "kwargs": {}}, "weight": 0.5},
    }
    config = from_dict_strict(CorrectorLossConfig, data)
    assert config.regularization.loss.type == "L1"
    assert config.precorrector_optimization.exclude_names_and_prefixes == ["a"]
    assert config.precorrector_optimization.target == "raw"
    with pytest.raises(ConfigError, match="weigth"):
        from_dict_strict(CorrectorLossConfig, {"regularization": {"weigth": 0.5}})
    with pytest.raises(ConfigError, match="global_mean_type"):
        from_dict_strict(
            CorrectorLossConfig,
            {"regularization": {"loss": {"type": "MSE", "global_mean_type": "LpLoss"}}},
        )
    with pytest.raises(ConfigError, match="and/or"):
        from_dict_strict(CorrectorLossConfig, {})
    with pytest.raises(ConfigError, match="EnsembleLoss"):
        from_dict_strict(
            CorrectorLossConfig, {"regularization": {"loss": {"type": "EnsembleLoss"}}}
        )


def test_default_regularization_loss_is_mse():
    assert CorrectorRegularizationConfig().loss.type == "MSE"


# ------------------------------------------- SIP through the corrector (inverse)

LATS = torch.tensor([-50.0, 0.0, 30.0])
OPS = LatLonOperations.from_latitudes(LATS, W)
CLAMPED = ["b_0", "b_1"]
SHIFTED = ["c"]
CONSERVED_MEAN = 0.3


def awm(x: torch.Tensor) -> torch.Tensor:
    """Area-weighted mean over (lat, lon), kept as [batch, 1, 1]."""
    weights = torch.cos(torch.deg2rad(LATS)).to(x.dtype)[:, None].expand(H, W)
    return (x * weights).sum(dim=(-2, -1), keepdim=True) / weights.sum()


def fake_corrector(x: TensorMapping) -> TensorDict:
    """Clamp ``b_*`` at zero, shift ``c`` to the area-weighted mean 0.3."""
    out = {n: x[n].clamp(min=0.0) for n in CLAMPED}
    out["c"] = x["c"] - awm(x["c"]) + CONSERVED_MEAN
    return out


def hand_preimage(raw: TensorMapping, goal: TensorMapping) -> TensorDict:
    """The nearest pre-images of the corrected ``goal``, written out."""
    out = {n: torch.where(goal[n] > 0, goal[n], raw[n].clamp(max=0.0)) for n in CLAMPED}
    out["c"] = goal["c"] + awm(raw["c"] - goal["c"])
    return out


def sip_step(seed: int = 0, *, batch: int = B) -> FakeStepOutput:
    """A step whose raw output ``x`` went through ``fake_corrector``."""
    raw = {n: randn(60 + seed + i, batch, H, W) for i, n in enumerate(NAMES)}
    for n in NAMES:
        raw[n].requires_grad_()
    corrected = fake_corrector(raw)
    detached = {n: v.detach() for n, v in raw.items()}

    def nearest_preimage(goal: TensorMapping) -> TensorDict:
        return {k: v.detach() for k, v in hand_preimage(detached, goal).items()}

    return FakeStepOutput(
        output={**raw, **corrected},
        uncorrected={n: raw[n] for n in CLAMPED + SHIFTED},
        nearest_preimage=nearest_preimage,
    )


def inverse(exclude=(), eta: float = 1.0) -> CorrectorLossConfig:
    return CorrectorLossConfig(
        precorrector_optimization=PreCorrectorOptimizationConfig(
            list(exclude), target="inverse", eta=eta
        )
    )


def test_inverse_loss_is_step_loss_of_raw_against_preimage():
    step, target = sip_step(), make_target()
    weights = {"a": 0.5, "c": 3.0}
    loss = build(inverse(), StepLossConfig(weights=weights))
    result = loss(step, target, step=0)
    raw = {n: v.detach() for n, v in step.uncorrected.items()}
    x_tilde = {
        "b_0": torch.where(target["b_0"] > 0, target["b_0"], raw["b_0"].clamp(max=0)),
        "b_1": torch.where(target["b_1"] > 0, target["b_1"], raw["b_1"].clamp(max=0)),
        "c": target["c"] + awm(raw["c"] - target["c"]),
    }
    per_channel = [
        weights.get(n, 1.0)
        * (
            (({**step.output, **raw}[n].detach() - {**target, **x_tilde}[n]) / STDS[n])
            ** 2
        )
        .mean()
        .item()
        for n in NAMES
    ]
    np.testing.assert_allclose(result.total().item(), np.mean(per_channel), rtol=1e-12)
    # a, never corrected, is still scored against the data
    np.testing.assert_allclose(
        result.main.get_channel_losses()["a"].item(),
        0.5 * (((step.output["a"] - target["a"]) / STDS["a"]) ** 2).mean().item(),
        rtol=1e-12,
    )
    assert loss.needs_uncorrected_grad


def test_inverse_gradient_does_not_push_the_conserved_mean():
    step, target = sip_step(seed=1), make_target()
    build(inverse())(step, target, step=0).total().backward()
    raw = step.uncorrected["c"]
    grad = raw.grad
    n_points = B * H * W
    x_tilde = target["c"] + awm(raw.detach() - target["c"])
    expected = 2 * (raw.detach() - x_tilde) / STDS["c"] ** 2 / n_points / len(NAMES)
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(awm(grad), torch.zeros(B, 1, 1, dtype=grad.dtype))
    assert grad.abs().max() > 1e-4
    # the plain pre-corrector loss does push the mean
    step_raw = sip_step(seed=1)
    build(precorrector())(step_raw, target, step=0).total().backward()
    assert awm(step_raw.uncorrected["c"].grad).abs().max() > 1e-4


def test_inverse_gradient_is_zero_where_the_clamp_already_acts():
    step, target = sip_step(seed=2), make_target()
    build(inverse())(step, target, step=0).total().backward()
    for n in CLAMPED:
        raw, grad = step.uncorrected[n].detach(), step.uncorrected[n].grad
        handled = (target[n] <= 0) & (raw <= 0)
        assert handled.sum() > 0 and (~handled).sum() > 0
        assert (grad[handled] == 0).all()
        # raw > 0 over a non-positive target is pushed to zero, the rest to y*
        x_tilde = torch.where(target[n] > 0, target[n], raw.clamp(max=0.0))
        expected = 2 * (raw - x_tilde) / STDS[n] ** 2 / (B * H * W) / len(NAMES)
        torch.testing.assert_close(grad, expected)
        assert (grad[(target[n] <= 0) & (raw > 0)] > 0).all()


def test_inverse_eta_inverts_a_partial_step():
    eta = 0.25
    step, target = sip_step(seed=3), make_target()
    result = build(inverse(eta=eta))(step, target, step=0)
    raw = {n: v.detach() for n, v in step.uncorrected.items()}
    y = {n: v.detach() for n, v in step.output.items()}
    goal = {n: y[n] + eta * (target[n] - y[n]) for n in NAMES}
    x_tilde = hand_preimage(raw, goal)
    expected = hand_mse({**y, **raw}, {**target, **x_tilde})
    np.testing.assert_allclose(result.total().item(), expected, rtol=1e-12)
    full = build(inverse())(step, target, step=0).total().item()
    assert abs(result.total().item() - full) > 1e-3


def test_inverse_respects_exclusions():
    step, target = sip_step(seed=4), make_target()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = build(inverse(exclude=["c"]))(step, target, step=0)
    raw = {n: v.detach() for n, v in step.uncorrected.items()}
    x_tilde = hand_preimage(raw, target)
    prediction = {**step.output, "b_0": raw["b_0"], "b_1": raw["b_1"]}
    expected_target = {**target, "b_0": x_tilde["b_0"], "b_1": x_tilde["b_1"]}
    np.testing.assert_allclose(
        result.total().item(),
        hand_mse({k: v.detach() for k, v in prediction.items()}, expected_target),
        rtol=1e-12,
    )


def test_inverse_missing_target_points_stay_masked():
    step, target = sip_step(seed=5), make_target()
    target["c"][0, 1, 2] = float("nan")
    result = build(inverse())(step, target, step=0)
    assert torch.isfinite(result.total())
    raw = {n: v.detach() for n, v in step.uncorrected.items()}
    # the goal at a missing point is the current corrected prediction
    goal = dict(target)
    goal["c"] = torch.where(target["c"].isnan(), step.output["c"].detach(), target["c"])
    x_tilde = hand_preimage(raw, goal)["c"]
    valid = ~target["c"].isnan()
    channel = (((raw["c"] - x_tilde) / STDS["c"]) ** 2)[valid].mean().item()
    np.testing.assert_allclose(
        result.main.get_channel_losses()["c"].item(), channel, rtol=1e-12
    )


def test_inverse_without_preimage_raises_at_first_step():
    step, target = sip_step(), make_target()
    step.nearest_preimage = None
    with pytest.raises(ValueError, match="provides nearest pre-images"):
        build(inverse())(step, target, step=0)


def test_inverse_needs_single_member():
    with pytest.raises(ValueError, match="n_ensemble = 1"):
        build(inverse(), n_ensemble=2)
