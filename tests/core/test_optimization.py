"""``Optimization``: one clock, ACE's scheduler and checkpoint keys, validation."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.optimization import NullOptimization, OptimizationConfig

LR0 = 0.1


def _build(data: dict[str, Any], start_step: int = 0):
    parameter = torch.nn.Parameter(torch.zeros(1))
    config = from_dict_strict(OptimizationConfig, {"optimizer_type": "SGD", **data})
    return parameter, config.build([parameter], start_step=start_step)


def _step(parameter, optimization) -> None:
    parameter.grad = torch.ones(1)
    optimization.step_weights()


def test_clock_ticks_once_per_step_and_is_saved_once():
    parameter, optimization = _build(
        {"lr": LR0, "scheduler": {"type": "cosine", "kwargs": {"total_steps": 4}}}
    )
    for _ in range(3):
        _step(parameter, optimization)
    state = optimization.get_state()
    assert optimization.optimizer_steps == 3 == optimization.clock.step
    assert state["optimizer_steps"] == 3
    assert state["schedule"]["t"] == 3  # the schedule's position on the clock
    resumed_parameter, resumed = _build(
        {"lr": LR0, "scheduler": {"type": "cosine", "kwargs": {"total_steps": 4}}}
    )
    resumed.load_state(state)
    assert resumed.optimizer_steps == 3
    assert resumed.learning_rate == pytest.approx(optimization.learning_rate)
    _step(parameter, optimization)
    _step(resumed_parameter, resumed)
    assert resumed.learning_rate == pytest.approx(optimization.learning_rate)
    assert resumed.learning_rate == pytest.approx(0.0, abs=1e-12)


def test_a_later_phase_starts_the_clock_where_the_run_is():
    parameter, optimization = _build(
        {"lr": LR0, "scheduler": {"type": "linear", "kwargs": {"total_steps": 2}}},
        start_step=10,
    )
    assert optimization.optimizer_steps == 10 and optimization.schedule.t == 0
    assert optimization.learning_rate == pytest.approx(LR0)
    _step(parameter, optimization)
    assert optimization.optimizer_steps == 11 and optimization.schedule.t == 1
    assert optimization.learning_rate == pytest.approx(LR0 / 2)


def test_torch_scheduler_steps_per_epoch_by_default_as_in_ace():
    parameter, optimization = _build(
        {"lr": LR0, "scheduler": {"type": "StepLR", "kwargs": {"step_size": 1}}}
    )
    for _ in range(3):
        _step(parameter, optimization)
    assert optimization.learning_rate == pytest.approx(LR0)
    optimization.step_epoch(metric=1.0)
    assert optimization.learning_rate == pytest.approx(LR0 * 0.1)
    parameter, per_step = _build(
        {
            "lr": LR0,
            "scheduler": {
                "type": "StepLR",
                "kwargs": {"step_size": 1},
                "step_each_iteration": True,
            },
        }
    )
    _step(parameter, per_step)
    assert per_step.learning_rate == pytest.approx(LR0 * 0.1)
    per_step.step_epoch(metric=1.0)
    assert per_step.learning_rate == pytest.approx(LR0 * 0.1)


def test_ace_checkpoint_key_and_former_spelling():
    ace = from_dict_strict(
        OptimizationConfig, {"checkpoint": {"after_n_forward_steps": 2}}
    )
    former = from_dict_strict(
        OptimizationConfig, {"checkpoint_after_n_forward_steps": 2}
    )
    assert ace == former
    assert ace.checkpoint.after_n_forward_steps == 2
    parameter = torch.nn.Parameter(torch.zeros(1))
    assert ace.build([parameter]).checkpoint_after_n_forward_steps == 2
    with pytest.raises(ConfigError, match="not both"):
        from_dict_strict(
            OptimizationConfig,
            {
                "checkpoint_after_n_forward_steps": 1,
                "checkpoint": {"after_n_forward_steps": 2},
            },
        )
    with pytest.raises(ConfigError, match="not supported here"):
        from_dict_strict(
            OptimizationConfig, {"checkpoint": {"kwargs": {"preserve_rng_state": 0}}}
        )
    with pytest.raises(ConfigError, match="after_n_forward_steps must be >= 0"):
        from_dict_strict(
            OptimizationConfig, {"checkpoint": {"after_n_forward_steps": -1}}
        )


def test_null_optimization_neither_backpropagates_nor_synchronises():
    parameter = torch.nn.Parameter(torch.ones(1))
    null = NullOptimization()
    with null.rollout_step_context(is_last=False):
        null.accumulate_loss((parameter * 3).sum())
    assert parameter.grad is None
    assert not null.use_gradient_accumulation
    assert null.checkpoint_after_n_forward_steps is None


REFERENCE = Path(__file__).parent / "data" / "ace_lr_schedules.json"


@pytest.mark.parametrize("case", sorted(json.loads(REFERENCE.read_text())["cases"]))
def test_torch_schedulers_follow_the_released_ace_clock(case: str):
    """Rates per batch equal the released package's (scripts/reference_ace_...)."""
    reference = json.loads(REFERENCE.read_text())
    meta, expected = reference["meta"], reference["cases"][case]
    module = torch.nn.Linear(1, 1, bias=False)
    optimization = from_dict_strict(
        OptimizationConfig,
        {
            "optimizer_type": "Adam",
            "lr": meta["lr"],
            "scheduler": expected["scheduler"],
        },
    ).build(module.parameters())
    rates = []
    for epoch in range(meta["n_epochs"]):
        for _ in range(meta["n_batches"]):
            rates.append(optimization.learning_rate)
            optimization.accumulate_loss(module(torch.ones(1, 1)).sum() ** 2)
            optimization.step_weights()
        optimization.step_epoch(metric=meta["valid_losses"][epoch])
    rates.append(optimization.learning_rate)
    assert rates == pytest.approx(expected["rates"], rel=1e-12, abs=1e-15)
