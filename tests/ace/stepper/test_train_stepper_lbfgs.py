"""L-BFGS training steps: the rollout re-runs per evaluation, clocks tick once."""

import copy

import pytest
import torch
from stepper_builders import batch, build_stepper, build_train_stepper

from fme.ace.models.lora_layouts import LORA_LAYOUTS
from fme.core.lora import LoRAConfig, apply_lora, has_lora
from fme.core.optimization import OptimizationConfig

LORA = LoRAConfig(rank=1, target_modules=["*"])


def _lbfgs(stepper, **kwargs):
    config = OptimizationConfig(
        optimizer_type="LBFGS", lr=1.0, kwargs={"max_iter": 5, **kwargs}
    )
    return config.build(stepper.module.parameters())


def _params(stepper) -> list[torch.Tensor]:
    return [p.detach().clone() for p in stepper.module.parameters()]


def test_lbfgs_step_reruns_rollout_and_ticks_clocks_once():
    stepper = build_stepper()
    training = {
        "n_forward_steps": 2,
        "loss_weight_schedules": {
            "main": {"type": "linear", "start": 1.0, "end": 0.5, "n_steps": 10}
        },
    }
    train = build_train_stepper(stepper, training)
    data = batch(n_times=3)
    before = train.validate_on_batch(data).metrics["loss"]
    calls = {"n": 0}
    rollout = stepper.rollout

    def counting_rollout(**kwargs):
        calls["n"] += 1
        return rollout(**kwargs)

    stepper.rollout = counting_rollout  # type: ignore[method-assign]
    optimization = _lbfgs(stepper)
    out = train.train_on_batch(data, optimization)
    n_evals = out.metrics["closure_evaluations"]
    assert n_evals == calls["n"] == optimization.last_closure_evaluations
    assert n_evals > 2
    # metrics come from the first evaluation: the loss before the step
    assert out.metrics["loss"] == pytest.approx(before, rel=1e-5)
    assert out.metrics["loss_weight/main"] == 1.0
    assert optimization.optimizer_steps == 1
    assert train.loss_weights.t == 1
    assert train.loss_weights.weights()["main"] == pytest.approx(0.95)
    stepper.rollout = rollout  # type: ignore[method-assign]
    after = train.validate_on_batch(data).metrics["loss"]
    assert after < 0.5 * before


def test_lbfgs_loss_is_the_plain_backprop_loss():
    """The closure's loss and gradient are those of the un-accumulated rollout."""
    stepper = build_stepper()
    reference = copy.deepcopy(stepper)
    data = batch(n_times=3)
    train = build_train_stepper(stepper, {"n_forward_steps": 2})
    optimization = _lbfgs(stepper, max_iter=1, line_search_fn=None)
    lr = 0.01
    for group in optimization.optimizer.param_groups:
        group["lr"] = lr
    train.train_on_batch(data, optimization)
    # the first L-BFGS iteration is a gradient step of size lr * min(1, 1/|g|_1)
    ref_train = build_train_stepper(reference, {"n_forward_steps": 2})
    rollout = reference.rollout(
        initial_condition={n: data.data[n][:, 0] for n in ["a", "b"]},
        forcing={"f": data.data["f"]},
        n_forward_steps=2,
        detach_uncorrected=True,
    )
    total = sum(
        ref_train.loss(
            out, {n: data.data[n][:, i + 1] for n in ["a", "b"]}, step=i
        ).total()
        for i, out in enumerate(rollout)
    )
    params = list(reference.module.parameters())
    grads = torch.autograd.grad(total, params)
    g_l1 = sum(g.abs().sum() for g in grads)
    step = lr * min(1.0, 1.0 / float(g_l1))
    updated = list(stepper.module.parameters())
    for p0, p1, g in zip(params, updated, grads, strict=True):
        torch.testing.assert_close(
            p1.detach(), p0.detach() - step * g, rtol=1e-5, atol=1e-7
        )


def test_nonfinite_first_evaluation_skips_the_batch():
    stepper = build_stepper()
    before = _params(stepper)
    train = build_train_stepper(
        stepper, {"loss": {"type": "NaN"}, "on_nonfinite_loss": "skip_batch"}
    )
    optimization = _lbfgs(stepper)
    out = train.train_on_batch(batch(), optimization)
    assert out.skipped and out.metrics["skipped_batches"] == 1.0
    assert optimization.optimizer_steps == 0 and train.loss_weights.t == 0
    for p, q in zip(before, _params(stepper), strict=True):
        assert torch.equal(p, q)


def test_lora_state_saves_merged_weights_and_resumes_adapters():
    stepper = build_stepper()
    apply_lora(stepper.base_module, LORA, layouts=LORA_LAYOUTS)
    train = build_train_stepper(stepper)
    optimization = OptimizationConfig(optimizer_type="Adam", lr=0.05).build(
        stepper.module.parameters()
    )
    for _ in range(2):
        train.train_on_batch(batch(), optimization)
    state = train.get_state()
    assert sorted(state["stepper"]["module"]) == ["bias", "weight"]
    assert "parametrizations.weight.0.lora_B" in state["lora"]
    torch.testing.assert_close(
        state["stepper"]["module"]["weight"], stepper.base_module.weight
    )
    other = build_stepper(seed=3)
    apply_lora(other.base_module, LORA, layouts=LORA_LAYOUTS)
    other_train = build_train_stepper(other)
    other_train.load_state(state)
    assert has_lora(other.base_module)
    for name, value in stepper.base_module.state_dict().items():
        assert torch.equal(other.base_module.state_dict()[name], value), name
