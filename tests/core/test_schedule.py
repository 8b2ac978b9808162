"""The curves of ``fme.core.schedule``, and LR and loss weights sharing them."""

import math
from typing import Any

import pytest
import torch

from fme.core import schedule
from fme.core.config_loading import from_dict_strict
from fme.core.loss_weight_schedule import (
    LossWeightScheduleConfig,
    build_loss_weight_schedules,
)
from fme.core.optimization import OptimizationConfig


def test_curves_analytic_values():
    assert [schedule.constant(0.3)(t) for t in (0, 10**6)] == [0.3, 0.3]
    assert [schedule.linear(2.0, 0.0, 4)(t) for t in (0, 1, 4, 9)] == [2, 1.5, 0, 0]
    decay = schedule.exponential(8.0, 0.5, 2, end=1.0)
    assert [decay(t) for t in (0, 2, 4, 6, 20)] == pytest.approx([8, 4, 2, 1, 1])
    growth = schedule.exponential(1.0, 2.0, 1, end=5.0)
    assert [growth(t) for t in (0, 2, 3, 10**6)] == [1.0, 4.0, 5.0, 5.0]
    half = schedule.cosine(3.0, 1.0, 4)
    assert [half(t) for t in (0, 2, 4, 8)] == pytest.approx([3.0, 2.0, 1.0, 1.0])
    steps = schedule.piecewise_constant([2, 5], [1.0, 0.5, 0.1])
    assert [steps(t) for t in (0, 1, 2, 4, 5, 99)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]


def test_sequential_restarts_each_member_and_warmup_cosine_is_one():
    seq = schedule.sequential(
        [schedule.linear(0.0, 1.0, 2), schedule.cosine(1.0, 0.0, 2)], [2]
    )
    assert [seq(t) for t in range(6)] == pytest.approx([0, 0.5, 1, 0.5, 0, 0])
    warm = schedule.warmup_cosine(
        start=0.0, peak=1.0, end=0.0, warmup_steps=2, n_steps=4
    )
    assert [warm(t) for t in range(6)] == pytest.approx([seq(t) for t in range(6)])
    cold = schedule.warmup_cosine(
        start=0.0, peak=1.0, end=0.0, warmup_steps=0, n_steps=2
    )
    assert cold(1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="must exceed warmup_steps"):
        schedule.warmup_cosine(start=0, peak=1, end=0, warmup_steps=3, n_steps=3)


# the same curve spelled by each surface: (LR type, LR kwargs, weight kwargs)
# with the LR's start lr0 = LR0
LR0 = 0.4
SAME_CURVES = [
    (
        "linear",
        {"total_steps": 6, "lr_end": 0.1},
        {"start": LR0, "end": 0.1, "n_steps": 6},
    ),
    (
        "cosine",
        {"total_steps": 6, "lr_end": 0.1},
        {"start": LR0, "end": 0.1, "n_steps": 6},
    ),
    (
        "exponential",
        {"decay_rate": 0.25, "decay_steps": 6, "lr_end": 0.1},
        {"start": LR0, "end": 0.1, "n_steps": 6},
    ),
    (
        "warmup_cosine",
        {"warmup_steps": 3, "total_steps": 8, "lr_start": 0.05, "lr_end": 0.01},
        {"start": 0.05, "peak": LR0, "end": 0.01, "warmup_steps": 3, "n_steps": 8},
    ),
    (
        "piecewise_constant",
        {"boundaries": [2, 5], "values": [0.4, 0.2, 0.1]},
        {"boundaries": [2, 5], "values": [0.4, 0.2, 0.1]},
    ),
    ("constant", {}, {"value": LR0}),
]


@pytest.mark.parametrize("type_, lr_kwargs, weight_kwargs", SAME_CURVES)
def test_lr_and_loss_weight_schedules_of_a_type_give_the_same_curve(
    type_: str, lr_kwargs: dict[str, Any], weight_kwargs: dict[str, Any]
):
    """Both read one optimiser clock; the optimiser's rate equals the weight."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimization = from_dict_strict(
        OptimizationConfig,
        {
            "optimizer_type": "SGD",
            "lr": LR0,
            "scheduler": {"type": type_, "kwargs": lr_kwargs},
        },
    ).build([parameter])
    weights = build_loss_weight_schedules(
        {"main": LossWeightScheduleConfig(type=type_, kwargs=weight_kwargs)},
        term_names=["main"],
        base_weights={},
        clock=optimization.clock,
    )
    rates, weight_values = [], []
    for _ in range(12):
        rates.append(optimization.learning_rate)
        weight_values.append(weights.weights()["main"])
        parameter.grad = torch.ones(1)
        optimization.step_weights()
    assert optimization.optimizer_steps == 12 and weights.t == 12
    assert rates == pytest.approx(weight_values, rel=1e-12, abs=1e-15)
    assert len(set(rates)) > 1 or type_ == "constant"  # the curve moved


def test_lr_exponential_floor_is_the_decay_end():
    curve = schedule.exponential(LR0, 0.5, 1, end=0.1)
    assert [curve(t) for t in range(4)] == pytest.approx([0.4, 0.2, 0.1, 0.1])
    assert math.isinf(schedule.exponential(1.0, 10.0, 1e-3)(10**6))
