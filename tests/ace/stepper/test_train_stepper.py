import copy
import logging

import pytest
import torch
from stepper_builders import STDS, batch, build_stepper, build_train_stepper

from fme.ace.corrector.corrector import CorrectorABC
from fme.ace.stepper.train_stepper import NonFiniteLossError
from fme.core.lr_schedule import SchedulerConfig
from fme.core.optimization import CheckpointConfig, OptimizationConfig


def _sgd(stepper, *, accumulate: bool, lr: float = 1.0):
    config = OptimizationConfig(
        optimizer_type="SGD", lr=lr, use_gradient_accumulation=accumulate
    )
    return config.build(stepper.module.parameters())


def _params(stepper) -> list[torch.Tensor]:
    return [p.detach().clone() for p in stepper.module.parameters()]


def test_gradient_accumulation_equals_plain_backprop_for_one_step():
    plain = build_stepper()
    accumulated = copy.deepcopy(plain)
    data = batch(n_times=2)
    out_plain = build_train_stepper(plain).train_on_batch(
        data, _sgd(plain, accumulate=False)
    )
    out_acc = build_train_stepper(accumulated).train_on_batch(
        data, _sgd(accumulated, accumulate=True)
    )
    assert out_plain.metrics["loss"] == pytest.approx(out_acc.metrics["loss"], rel=1e-6)
    for p, q in zip(_params(plain), _params(accumulated), strict=True):
        torch.testing.assert_close(p, q)


def test_gradient_accumulation_multistep_is_truncated_backprop():
    """With accumulation each step's gradient stops at its (detached) input."""
    stepper = build_stepper()
    reference = copy.deepcopy(stepper)
    data = batch(n_times=3)
    train = build_train_stepper(stepper, {"n_forward_steps": 2})
    before = _params(stepper)
    train.train_on_batch(data, _sgd(stepper, accumulate=True, lr=0.1))
    # reference gradient: sum of per-step losses, state detached between steps
    rollout = reference.rollout(
        initial_condition={n: data.data[n][:, 0] for n in ["a", "b"]},
        forcing={"f": data.data["f"]},
        n_forward_steps=2,
        detach_uncorrected=True,
        detach_between_steps=True,
    )
    total = torch.zeros(())
    for i, out in enumerate(rollout):
        target = {n: data.data[n][:, i + 1] for n in ["a", "b"]}
        total = total + train.loss(out, target, step=i).total()
    grads = torch.autograd.grad(total, list(reference.module.parameters()))
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        assert torch.isfinite(p1).all()
        torch.testing.assert_close(p1, p0 - 0.1 * g, rtol=1e-5, atol=1e-6)


def test_per_step_metrics_and_loss_sum():
    stepper = build_stepper()
    train = build_train_stepper(stepper, {"n_forward_steps": 2})
    out = train.train_on_batch(
        batch(n_times=3), _sgd(stepper, accumulate=False, lr=0.0 + 1e-9)
    )
    m = out.metrics
    assert m["loss"] == pytest.approx(m["loss_step_0"] + m["loss_step_1"], rel=1e-6)
    assert {"loss/a", "loss/b", "loss_weight/main"} <= set(m)
    assert train.loss_weights.t == 1


def test_optimize_last_step_only_uses_last_loss():
    stepper = build_stepper()
    train = build_train_stepper(
        stepper, {"n_forward_steps": 2, "optimize_last_step_only": True}
    )
    out = train.train_on_batch(
        batch(n_times=3), _sgd(stepper, accumulate=False, lr=1e-9)
    )
    assert out.metrics["loss"] == pytest.approx(out.metrics["loss_step_1"], rel=1e-6)


def test_nonfinite_loss_raises_naming_term_step_and_position():
    stepper = build_stepper()
    train = build_train_stepper(stepper, {"loss": {"type": "NaN"}})
    before = _params(stepper)
    with pytest.raises(
        NonFiniteLossError, match=r"'main'.*rollout step 0, epoch 3, batch 7"
    ):
        train.train_on_batch(
            batch(), _sgd(stepper, accumulate=False), where="epoch 3, batch 7"
        )
    skipping = build_train_stepper(
        stepper, {"loss": {"type": "NaN"}, "on_nonfinite_loss": "skip_batch"}
    )
    out = skipping.train_on_batch(batch(), _sgd(stepper, accumulate=True))
    assert out.skipped and out.metrics["skipped_batches"] == 1.0
    for p, q in zip(before, _params(stepper), strict=True):
        torch.testing.assert_close(p, q)


def test_ensemble_repeats_inputs_sample_major():
    stepper = build_stepper(builder="ConvNet")
    stepper_config = {"n_ensemble": 2, "loss": {"type": "EnsembleLoss"}}
    train = build_train_stepper(stepper, stepper_config)
    data = batch(n_samples=2, n_times=2)
    initial, forcing = train._rollout_inputs(data, 1)
    torch.testing.assert_close(initial["a"][0], initial["a"][1])
    torch.testing.assert_close(initial["a"][2], data.data["a"][1, 0])
    assert forcing["f"].shape[0] == 4


# ---- corrector-aware training -------------------------------------------------


def _corrector_stepper(seed: int = 0):
    return build_stepper(
        seed=seed,
        corrector={"conserve_global_mean_names": ["a"], "force_positive_names": []},
    )


def test_corrector_loss_without_corrector_fails_at_build():
    stepper = build_stepper()
    with pytest.raises(ValueError, match="add stepper.step.config.corrector"):
        build_train_stepper(
            stepper, {"corrector_loss": {"regularization": {"weight": 1.0}}}
        )


def test_precorrector_loss_equals_loss_on_raw_prediction():
    stepper = _corrector_stepper()
    train = build_train_stepper(
        stepper, {"corrector_loss": {"precorrector_optimization": {}}}
    )
    plain = build_train_stepper(stepper)
    data = batch(n_times=2)
    inputs = {n: data.data[n][:, 0] for n in ["a", "b", "f"]}
    with torch.no_grad():
        out = stepper.step.step(
            inputs, {"f": data.data["f"][:, 1]}, detach_uncorrected=True
        )
        raw = {**out.output, **out.uncorrected}
        target = {n: data.data[n][:, 1] for n in ["a", "b"]}
        expected = plain.loss.step_loss(raw, target, step=0).total()
        corrected = plain.loss.step_loss(out.output, target, step=0).total()
    metrics = train.validate_on_batch(data).metrics
    assert metrics["loss_step_0"] == pytest.approx(float(expected), rel=1e-6)
    assert float(expected) != pytest.approx(float(corrected), rel=1e-3)


def test_precorrector_exclusion_and_warn_once(caplog):
    stepper = _corrector_stepper()
    train = build_train_stepper(
        stepper,
        {
            "corrector_loss": {
                "precorrector_optimization": {"exclude_names_and_prefixes": ["a", "b"]}
            }
        },
    )
    plain = build_train_stepper(stepper)
    data = batch(n_times=3)
    with pytest.warns(UserWarning, match="'b'") as record:
        m = train.validate_on_batch(data).metrics
        train.validate_on_batch(data)
    assert len([w for w in record if "'b'" in str(w.message)]) == 1
    # everything corrected is excluded, so the loss is the plain corrected loss
    assert m["loss_step_0"] == pytest.approx(
        plain.validate_on_batch(data).metrics["loss_step_0"]
    )


def _regularization_gradient_reference(stepper, data, weight):
    """The penalty's parameter gradient, computed without StepOutputLoss."""
    module = stepper.module
    inputs = {n: data.data[n][:, 0] for n in ["a", "b", "f"]}
    normalizer = stepper.step.normalizer
    packed = torch.stack(
        [normalizer.normalize(inputs)[n] for n in ["a", "b", "f"]], dim=1
    )
    raw_a = module(packed)[:, 0] * STDS["a"] + 1.0
    ops = stepper.dataset_info.gridded_operations
    correction = ops.area_weighted_mean(inputs["a"]) - ops.area_weighted_mean(raw_a)
    # MSE of the normalised correction, uniform over the grid, one corrected channel
    penalty = weight * ((correction / STDS["a"]) ** 2).mean()
    return penalty, torch.autograd.grad(penalty, list(module.parameters()))


def test_regularization_gradient_flows_through_correction():
    stepper = _corrector_stepper()
    reference = copy.deepcopy(stepper)
    data = batch(n_times=2)
    weight = 0.7
    # main loss weight 0 isolates the penalty's gradient
    train = build_train_stepper(
        stepper,
        {
            "corrector_loss": {"regularization": {"weight": weight}},
            "loss_weight_schedules": {"main": {"type": "constant", "value": 0.0}},
        },
    )
    before = _params(stepper)
    out = train.train_on_batch(data, _sgd(stepper, accumulate=False))
    penalty, grads = _regularization_gradient_reference(reference, data, weight)
    assert out.metrics["corrector_regularization_step_0"] == pytest.approx(
        float(penalty.detach()), rel=1e-5
    )
    assert out.metrics["corrector_regularization"] == pytest.approx(
        float(penalty.detach()), rel=1e-5
    )
    assert any(g.abs().sum() > 0 for g in grads)
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        torch.testing.assert_close(p1, p0 - g, rtol=1e-5, atol=1e-7)


def test_both_features_under_gradient_accumulation_match_reference():
    stepper = _corrector_stepper(seed=3)
    reference = copy.deepcopy(stepper)
    data = batch(n_times=3)
    training = {
        "n_forward_steps": 2,
        "corrector_loss": {
            "precorrector_optimization": {},
            "regularization": {"weight": 0.5},
        },
    }
    train = build_train_stepper(stepper, training)
    before = _params(stepper)
    out = train.train_on_batch(data, _sgd(stepper, accumulate=True, lr=0.1))
    # reference: per-step totals on a detached-state rollout with attached uncorrected
    ref_train = build_train_stepper(reference, training)
    rollout = reference.rollout(
        initial_condition={n: data.data[n][:, 0] for n in ["a", "b"]},
        forcing={"f": data.data["f"]},
        n_forward_steps=2,
        detach_uncorrected=False,
        detach_between_steps=True,
    )
    total = torch.zeros(())
    for i, step_out in enumerate(rollout):
        target = {n: data.data[n][:, i + 1] for n in ["a", "b"]}
        result = ref_train.loss(step_out, target, step=i)
        assert out.metrics[f"loss_step_{i}"] == pytest.approx(
            float(result.main.total().detach()), rel=1e-5
        )
        assert out.metrics[f"corrector_regularization_step_{i}"] == pytest.approx(
            float(result.regularization.detach()), rel=1e-5
        )
        total = total + result.total()
    grads = torch.autograd.grad(total, list(reference.module.parameters()))
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        torch.testing.assert_close(p1, p0 - 0.1 * g, rtol=1e-5, atol=1e-6)
    assert "correction_rms/a" in out.metrics


def test_correction_rms_logged_without_corrector_loss():
    stepper = _corrector_stepper()
    out = build_train_stepper(stepper).validate_on_batch(batch(n_times=2))
    assert out.metrics["correction_rms/a"] > 0
    assert "correction_rms/b" not in out.metrics


def test_empty_uncorrected_warns_once(caplog):
    stepper = build_stepper(corrector={"force_positive_names": []})
    train = build_train_stepper(
        stepper, {"corrector_loss": {"precorrector_optimization": {}}}
    )
    with caplog.at_level(logging.WARNING):
        train.validate_on_batch(batch())
        train.validate_on_batch(batch())
    assert sum("changed no variable" in r.message for r in caplog.records) == 1


# ---- SIP through the corrector (precorrector_optimization.target: inverse) ----


def _sip_stepper(seed: int = 0):
    return build_stepper(
        seed=seed,
        corrector={"conserve_global_mean_names": ["a"], "force_positive_names": ["b"]},
    )


def _sip_reference_loss(stepper, data):
    """Main loss of raw x against the hand-computed nearest pre-image x~."""
    ops = stepper.dataset_info.gridded_operations
    inputs = {n: data.data[n][:, 0] for n in ["a", "b", "f"]}
    out = stepper.step.step(
        inputs, {"f": data.data["f"][:, 1]}, detach_uncorrected=False
    )
    raw = out.uncorrected
    target = {n: data.data[n][:, 1] for n in ["a", "b"]}
    x_tilde = {
        "a": target["a"]
        + ops.area_weighted_mean(raw["a"].detach() - target["a"], keepdim=True),
        "b": torch.where(target["b"] > 0, target["b"], raw["b"].detach().clamp(max=0)),
    }
    per_channel = [((raw[n] - x_tilde[n]) / STDS[n]).pow(2).mean() for n in ["a", "b"]]
    return sum(per_channel) / 2, raw, target


def test_inverse_target_training_loss_and_update_match_hand_computation():
    stepper = _sip_stepper(seed=2)
    reference = copy.deepcopy(stepper)
    data = batch(n_times=2)
    train = build_train_stepper(
        stepper,
        {"corrector_loss": {"precorrector_optimization": {"target": "inverse"}}},
    )
    before = _params(stepper)
    out = train.train_on_batch(data, _sgd(stepper, accumulate=False, lr=0.5))
    expected, raw, target = _sip_reference_loss(reference, data)
    assert out.metrics["loss_step_0"] == pytest.approx(
        float(expected.detach()), rel=1e-5
    )
    # the proxy target is nearer than the data: smaller than the target-raw loss
    raw_loss = sum(((raw[n] - target[n]) / STDS[n]).pow(2).mean() for n in raw) / 2
    assert float(expected.detach()) < float(raw_loss.detach()) - 1e-3
    grads = torch.autograd.grad(
        expected, list(reference.module.parameters()), retain_graph=True
    )
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        torch.testing.assert_close(p1, p0 - 0.5 * g, rtol=1e-5, atol=1e-7)
    # no push on the mean the corrector fixes; none where the clamp acts
    grad_a, grad_b = torch.autograd.grad(expected, [raw["a"], raw["b"]])
    ops = reference.dataset_info.gridded_operations
    assert ops.area_weighted_mean(grad_a).abs().max() < 1e-9
    assert grad_a.abs().max() > 1e-5
    handled = (target["b"] <= 0) & (raw["b"].detach() <= 0)
    assert handled.any() and (grad_b[handled] == 0).all()


def test_inverse_target_validates_at_build():
    class NoInverse(CorrectorABC):
        def __call__(self, input_data, gen_data, forcing_data):
            return {}

    stepper = _sip_stepper()
    training = {"corrector_loss": {"precorrector_optimization": {"target": "inverse"}}}
    with pytest.raises(ValueError, match="n_ensemble = 1"):
        build_train_stepper(stepper, {**training, "n_ensemble": 2})
    stepper.step.corrector = NoInverse()
    with pytest.raises(ValueError, match="NoInverse has none; use target 'raw'"):
        build_train_stepper(stepper, training)
    build_train_stepper(
        stepper, {"corrector_loss": {"precorrector_optimization": {"target": "raw"}}}
    )


@pytest.mark.parametrize("accumulate", [False, True])
def test_clock_advances_once_per_optimizer_step(accumulate):
    stepper = build_stepper()
    train = build_train_stepper(
        stepper,
        {
            "n_forward_steps": 3,
            "loss_weight_schedules": {
                "main": {"type": "linear", "start": 1.0, "end": 0.0, "n_steps": 4}
            },
        },
    )
    optimization = OptimizationConfig(
        optimizer_type="SGD",
        lr=1e-3,
        use_gradient_accumulation=accumulate,
        scheduler=SchedulerConfig(
            type="exponential", kwargs={"decay_rate": 0.5, "decay_steps": 1}
        ),
    ).build(stepper.module.parameters())
    weights = []
    for _ in range(2):
        out = train.train_on_batch(batch(n_times=4), optimization)
        weights.append(out.metrics["loss_weight/main"])
    assert optimization.optimizer_steps == 2
    assert optimization.schedule.t == 2
    assert train.loss_weights.t == 2
    assert optimization.learning_rate == pytest.approx(1e-3 * 0.25)
    # the weight used by step t is w(t): 1.0 then 0.75
    assert weights == pytest.approx([1.0, 0.75])


@pytest.mark.parametrize("accumulate", [False, True])
def test_activation_checkpointing_gives_the_same_update(accumulate):
    plain = _corrector_stepper(seed=4)
    checkpointed = copy.deepcopy(plain)
    training = {
        "n_forward_steps": 3,
        "corrector_loss": {
            "precorrector_optimization": {},
            "regularization": {"weight": 0.5},
        },
    }
    data = batch(n_times=4)
    forward_calls = {}
    for stepper, after in ((plain, None), (checkpointed, 1)):
        calls = forward_calls.setdefault(after, [0])
        stepper.module.register_forward_hook(
            lambda *_, calls=calls: calls.__setitem__(0, calls[0] + 1)
        )
        optimization = OptimizationConfig(
            optimizer_type="SGD",
            lr=0.1,
            use_gradient_accumulation=accumulate,
            checkpoint=CheckpointConfig(after_n_forward_steps=after),
        ).build(stepper.module.parameters())
        build_train_stepper(stepper, training).train_on_batch(data, optimization)
    # steps 1 and 2 are recomputed in backward
    assert forward_calls == {None: [3], 1: [5]}
    for p, q in zip(_params(plain), _params(checkpointed), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(
            _params(plain), _params(_corrector_stepper(seed=4)), strict=True
        )
    )


def test_former_loss_scaling_key_moves_to_each_terms_scaling():
    from fme.ace.stepper.train_stepper import TrainStepperConfig
    from fme.core.config_loading import ConfigError, from_dict_strict

    area = [{"type": "area"}]
    regularization = {"regularization": {"weight": 0.5}}
    former = from_dict_strict(
        TrainStepperConfig,
        {
            "corrector_loss": regularization,
            "loss_scaling": {"main": area, "corrector_regularization": area},
        },
    )
    current = from_dict_strict(
        TrainStepperConfig,
        {
            "loss": {"scaling": area},
            "corrector_loss": {"regularization": {"weight": 0.5, "scaling": area}},
        },
    )
    assert former == current
    assert [s.type for s in current.loss.scaling] == ["area"]
    with pytest.raises(ConfigError, match="scaling once"):
        from_dict_strict(
            TrainStepperConfig,
            {"loss": {"scaling": area}, "loss_scaling": {"main": area}},
        )
    with pytest.raises(ConfigError, match="needs stepper_training.corrector_loss"):
        from_dict_strict(
            TrainStepperConfig, {"loss_scaling": {"corrector_regularization": area}}
        )
    with pytest.raises(ConfigError, match="unknown term"):
        from_dict_strict(TrainStepperConfig, {"loss_scaling": {"global_mean": area}})


def test_rollout_length_outcomes_are_sampled_with_their_probabilities():
    stepper = build_stepper()
    outcomes = {
        "outcomes": [
            {"n_forward_steps": 1, "probability": 0.25},
            {"n_forward_steps": 2, "probability": 0.75},
        ]
    }
    train = build_train_stepper(stepper, {"n_forward_steps": outcomes})
    optimization = _sgd(stepper, accumulate=False, lr=1e-9)
    data = batch(n_times=3)
    n_batches = 400
    lengths = []
    for _ in range(n_batches):
        out = train.train_on_batch(data, optimization)
        lengths.append(out.n_forward_steps)
        # the sampled length is the rollout that ran
        assert ("loss_step_1" in out.metrics) == (out.n_forward_steps == 2)
    n_two = lengths.count(2)
    assert lengths.count(1) + n_two == n_batches
    # binomial(400, 0.75): mean 300, std 8.7; 5 std either side
    assert abs(n_two - 300) < 5 * 8.7, n_two
    # seeded: the same sequence again
    again = build_train_stepper(build_stepper(), {"n_forward_steps": outcomes})
    opt = _sgd(again.stepper, accumulate=False, lr=1e-9)
    assert [
        again.train_on_batch(data, opt).n_forward_steps for _ in range(50)
    ] == lengths[:50]


def _nan_at_second_target(data):
    """A batch whose rollout step 0 is finite and step 1 has a NaN input."""
    bad = copy.deepcopy(data)
    bad.data["f"][0, 1, 1, 1] = float("nan")  # the forcing of step 1
    return bad


@pytest.mark.parametrize("accumulate", [True, False])
def test_a_skipped_batch_takes_no_step_and_leaves_no_gradients(accumulate):
    stepper = build_stepper()
    reference = copy.deepcopy(stepper)
    training = {"n_forward_steps": 2, "on_nonfinite_loss": "skip_batch"}
    config = OptimizationConfig(
        optimizer_type="Adam", lr=0.01, use_gradient_accumulation=accumulate
    )
    train = build_train_stepper(stepper, training)
    optimization = config.build(stepper.module.parameters())
    before = _params(stepper)
    good, bad = batch(n_times=3, seed=1), _nan_at_second_target(batch(n_times=3))
    out = train.train_on_batch(bad, optimization)
    assert out.skipped
    # no optimiser step: weights, optimiser state, clock and schedules unchanged
    for p, q in zip(before, _params(stepper), strict=True):
        assert torch.equal(p, q)
    assert optimization.optimizer_steps == 0
    assert optimization.optimizer.state_dict()["state"] == {}
    assert train.loss_weights.t == 0
    # ... and no gradient of the skipped batch's finite step 0 is kept
    assert all(p.grad is None for p in stepper.module.parameters())
    train.train_on_batch(good, optimization)
    reference_train = build_train_stepper(reference, training)
    reference_opt = config.build(reference.module.parameters())
    reference_train.train_on_batch(good, reference_opt)
    assert optimization.optimizer_steps == 1
    for p, q in zip(_params(reference), _params(stepper), strict=True):
        assert torch.equal(p, q)
