import math
from typing import Any

import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.lr_schedule import LRSchedule, SchedulerConfig
from fme.core.optimization import OptimizerClock

LR0 = 0.1
# the optimiser clock each schedule reads (Optimization owns it in training)
_CLOCKS: dict[int, OptimizerClock] = {}


def _optimizer(lr: float = LR0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _build(
    type_: str | None, kwargs: dict[str, Any] | None = None, **extra: Any
) -> tuple[torch.optim.Optimizer, LRSchedule]:
    config = from_dict_strict(
        SchedulerConfig, {"type": type_, "kwargs": kwargs or {}, **extra}
    )
    optimizer = _optimizer()
    return optimizer, _build_config(config, optimizer)


def _build_config(
    config: SchedulerConfig, optimizer: torch.optim.Optimizer
) -> LRSchedule:
    clock = OptimizerClock()
    schedule = config.build(optimizer, lr0=LR0, clock=clock)
    _CLOCKS[id(schedule)] = clock
    return schedule


def _tick(schedule: LRSchedule) -> None:
    """What Optimization does after each optimiser step."""
    _CLOCKS[id(schedule)].tick()
    schedule.step_optimizer()


def _run(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule, n_steps: int
) -> list[float]:
    """[lr(t), lr(t+1), ..., lr(t+n_steps)] as seen by the optimiser."""
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(n_steps):
        optimizer.step()
        _tick(schedule)
        lrs.append(optimizer.param_groups[0]["lr"])
        assert schedule.current_lr == lrs[-1]
    return lrs


def _cos(fraction: float, start: float, end: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def test_no_type_is_constant():
    optimizer, schedule = _build(None)
    assert _run(optimizer, schedule, 3) == [LR0] * 4
    assert schedule.t == 3


def test_constant_with_max_lr_clamp():
    optimizer, schedule = _build("constant", {"max_lr": 0.05})
    assert _run(optimizer, schedule, 2) == [0.05] * 3


def test_exponential_closed_form_with_floor_and_clamp():
    kwargs = {"decay_rate": 0.5, "decay_steps": 2, "lr_end": 0.02, "max_lr": 0.08}
    optimizer, schedule = _build("exponential", kwargs)
    lrs = _run(optimizer, schedule, 8)
    for t, lr in enumerate(lrs):
        expected = min(0.08, max(0.02, LR0 * 0.5 ** (t / 2)))
        assert lr == pytest.approx(expected, rel=1e-12), t
    assert lrs[0] == pytest.approx(0.08)  # max_lr clamps t=0
    assert lrs[1] == pytest.approx(LR0 * 0.5**0.5)
    assert lrs[8] == pytest.approx(0.02)  # floor lr_end past 0.1 * 0.5**2.3


def test_exponential_min_lr_clamp():
    kwargs = {"decay_rate": 0.1, "decay_steps": 1, "min_lr": 0.003}
    optimizer, schedule = _build("exponential", kwargs)
    lrs = _run(optimizer, schedule, 3)
    assert lrs == pytest.approx([0.1, 0.01, 0.003, 0.003])


def test_cosine_closed_form():
    optimizer, schedule = _build("cosine", {"total_steps": 8, "lr_end": 0.01})
    lrs = _run(optimizer, schedule, 12)
    assert lrs[0] == pytest.approx(LR0)
    assert lrs[4] == pytest.approx((LR0 + 0.01) / 2)
    assert lrs[8] == pytest.approx(0.01)
    assert lrs[12] == pytest.approx(0.01)  # holds past the end
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(_cos(min(t, 8) / 8, LR0, 0.01)), t


def test_warmup_cosine_closed_form():
    kwargs = {"warmup_steps": 4, "total_steps": 10, "lr_start": 0.02, "lr_end": 0.0}
    optimizer, schedule = _build("warmup_cosine", kwargs)
    lrs = _run(optimizer, schedule, 14)
    assert lrs[0] == pytest.approx(0.02)
    assert lrs[2] == pytest.approx(0.02 + (LR0 - 0.02) * 2 / 4)
    assert lrs[4] == pytest.approx(LR0)
    assert lrs[7] == pytest.approx(LR0 / 2)  # half way through 6 cosine steps
    assert lrs[10] == pytest.approx(0.0, abs=1e-15)
    assert lrs[14] == pytest.approx(0.0, abs=1e-15)
    for t in range(4, 15):
        assert lrs[t] == pytest.approx(_cos(min(t - 4, 6) / 6, LR0, 0.0), abs=1e-15)


def test_piecewise_constant_values_at_boundaries():
    kwargs = {"boundaries": [2, 5], "values": [0.1, 0.01, 0.001], "min_lr": 0.002}
    optimizer, schedule = _build("piecewise_constant", kwargs)
    lrs = _run(optimizer, schedule, 7)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.002, 0.002, 0.002])


def test_torch_step_lr():
    optimizer, schedule = _build(
        "StepLR", {"step_size": 3, "gamma": 0.5}, step_each="optimizer_step"
    )
    lrs = _run(optimizer, schedule, 7)
    assert lrs == pytest.approx([LR0 * 0.5 ** (t // 3) for t in range(8)])


def test_torch_cosine_annealing_clamp_keeps_unclamped_trajectory():
    # CosineAnnealingLR is chainable: it computes lr(t+1) from lr(t). The clamp
    # must not feed back, so the clamped values equal clip(closed form).
    kwargs = {"T_max": 4, "eta_min": 0.0, "max_lr": 0.08, "min_lr": 0.01}
    optimizer, schedule = _build(
        "CosineAnnealingLR", kwargs, step_each="optimizer_step"
    )
    lrs = _run(optimizer, schedule, 8)
    for t, lr in enumerate(lrs):
        unclamped = 0.5 * LR0 * (1 + math.cos(math.pi * t / 4))  # periodic past T
        assert lr == pytest.approx(min(0.08, max(0.01, unclamped)), abs=1e-12), t
    assert lrs[8] == pytest.approx(0.08)


def test_sequential_torch_warmup_then_cosine():
    kwargs = {
        "schedulers": [
            {"type": "LinearLR", "kwargs": {"start_factor": 0.1, "total_iters": 3}},
            {"type": "CosineAnnealingLR", "kwargs": {"T_max": 4}},
        ],
        "milestones": [3],
    }
    optimizer, schedule = _build("sequential", kwargs)
    lrs = _run(optimizer, schedule, 7)
    warmup = [LR0 * (0.1 + 0.9 * t / 3) for t in range(3)]
    cosine = [0.5 * LR0 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert lrs == pytest.approx(warmup + cosine, abs=1e-12)


def test_sequential_with_shorthand_child_and_clamp():
    kwargs = {
        "schedulers": [
            {"type": "constant"},
            {"type": "exponential", "kwargs": {"decay_rate": 0.5, "decay_steps": 1}},
        ],
        "milestones": [2],
        "min_lr": 0.02,
    }
    optimizer, schedule = _build("sequential", kwargs)
    lrs = _run(optimizer, schedule, 6)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025, 0.02, 0.02])


def test_step_each_epoch_ignores_optimizer_steps():
    config = SchedulerConfig(
        type="StepLR", kwargs={"step_size": 1, "gamma": 0.5}, step_each="epoch"
    )
    optimizer = _optimizer()
    schedule = _build_config(config, optimizer)
    optimizer.step()
    _tick(schedule)
    assert schedule.current_lr == pytest.approx(LR0)
    schedule.step_epoch()
    assert schedule.current_lr == pytest.approx(LR0 / 2)
    assert schedule.t == 1


def test_torch_class_defaults_to_epochs_as_in_ace():
    # ACE's SchedulerConfig.step_each_iteration defaults to false: a torch
    # class steps at epoch ends unless told otherwise.
    optimizer, schedule = _build("StepLR", {"step_size": 1, "gamma": 0.5})
    assert schedule.step_each == "epoch"
    optimizer.step()
    _tick(schedule)
    assert schedule.current_lr == pytest.approx(LR0)
    schedule.step_epoch()
    assert schedule.current_lr == pytest.approx(LR0 / 2)


@pytest.mark.parametrize("type_", ["cosine", "sequential", None])
def test_curves_default_to_optimizer_steps(type_):
    kwargs = {
        "cosine": {"total_steps": 4},
        "sequential": {"schedulers": [{"type": "constant"}], "milestones": []},
        None: {},
    }[type_]
    _, schedule = _build(type_, kwargs)
    assert schedule.step_each == "optimizer_step"


@pytest.mark.parametrize("flag, expected", [(True, "optimizer_step"), (False, "epoch")])
def test_ace_step_each_iteration_alias(flag: bool, expected: str):
    _, schedule = _build("StepLR", {"step_size": 1}, step_each_iteration=flag)
    assert schedule.step_each == expected


def test_reduce_on_plateau_steps_on_metric_each_epoch():
    kwargs = {"patience": 0, "factor": 0.5, "min_lr": 0.03}
    optimizer, schedule = _build("ReduceLROnPlateau", kwargs, step_each="epoch")
    assert schedule.needs_metric
    schedule.step_epoch(metric=1.0)
    assert schedule.current_lr == pytest.approx(LR0)
    schedule.step_epoch(metric=2.0)  # no improvement: reduce
    assert schedule.current_lr == pytest.approx(0.05)
    schedule.step_epoch(metric=3.0)  # torch's own min_lr floor
    assert schedule.current_lr == pytest.approx(0.03)
    with pytest.raises(ValueError, match="validation loss"):
        schedule.step_epoch()


ROUND_TRIP_CASES = [
    ("warmup_cosine", {"warmup_steps": 3, "total_steps": 9, "min_lr": 0.01}),
    ("CosineAnnealingLR", {"T_max": 4, "max_lr": 0.07}),
    (
        "sequential",
        {
            "schedulers": [
                {"type": "LinearLR", "kwargs": {"start_factor": 0.2, "total_iters": 3}},
                {
                    "type": "exponential",
                    "kwargs": {"decay_rate": 0.7, "decay_steps": 1},
                },
            ],
            "milestones": [3],
            "max_lr": 0.09,
        },
    ),
]


@pytest.mark.parametrize("type_, kwargs", ROUND_TRIP_CASES)
def test_state_dict_round_trip_continues_identically(type_, kwargs):
    clock = {"step_each": "optimizer_step"}
    optimizer, schedule = _build(type_, kwargs, **clock)
    uninterrupted = _run(optimizer, schedule, 10)

    optimizer, schedule = _build(type_, kwargs, **clock)
    first = _run(optimizer, schedule, 5)
    optimizer_state = optimizer.state_dict()
    schedule_state = schedule.state_dict()

    resumed_optimizer, resumed = _build(type_, kwargs, **clock)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(schedule_state)
    assert resumed.t == 5
    second = _run(resumed_optimizer, resumed, 5)
    assert first + second[1:] == pytest.approx(uninterrupted, abs=1e-15)


def test_load_state_dict_sets_lr_without_optimizer_state():
    optimizer, schedule = _build("exponential", {"decay_rate": 0.5, "decay_steps": 1})
    _run(optimizer, schedule, 3)
    fresh_optimizer, fresh = _build(
        "exponential", {"decay_rate": 0.5, "decay_steps": 1}
    )
    fresh.load_state_dict(schedule.state_dict())
    assert fresh.current_lr == pytest.approx(LR0 / 8)


def test_shorthand_scales_every_param_group():
    optimizer = torch.optim.SGD(
        [
            {"params": [torch.nn.Parameter(torch.zeros(1))]},
            {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2 * LR0},
        ],
        lr=LR0,
    )
    config = SchedulerConfig(type="cosine", kwargs={"total_steps": 2})
    schedule = _build_config(config, optimizer)
    optimizer.step()
    _tick(schedule)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.1])


# --- config errors -------------------------------------------------------------


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict_strict(SchedulerConfig, data)
    return str(info.value)


def test_unknown_type_lists_shorthands_and_torch():
    message = _error({"type": "cosin"})
    assert "'cosin'" in message
    for name in ("constant", "exponential", "warmup_cosine", "piecewise_constant"):
        assert name in message
    assert "any class in torch.optim.lr_scheduler" in message


def test_shorthand_unknown_key_names_it_and_allowed():
    message = _error({"type": "cosine", "kwargs": {"total_steps": 3, "lr_min": 0}})
    assert "optimization.scheduler.kwargs" in message
    assert "lr_min" in message
    assert "['lr_end', 'max_lr', 'min_lr', 'total_steps']" in message


def test_shorthand_missing_key_names_it():
    message = _error({"type": "exponential", "kwargs": {"decay_rate": 0.5}})
    assert "missing" in message and "decay_steps" in message


def test_yaml_scientific_string_gets_hint():
    message = _error({"type": "cosine", "kwargs": {"total_steps": 5, "lr_end": "1e-5"}})
    assert "optimization.scheduler.kwargs.lr_end" in message
    assert "1.0e-5" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_steps": 3, "warmup_steps": 3}, "must exceed warmup_steps"),
        ({"total_steps": 3.5, "warmup_steps": 1}, "total_steps must be an integer"),
    ],
)
def test_warmup_cosine_value_errors(kwargs, match):
    assert match in _error({"type": "warmup_cosine", "kwargs": kwargs})


def test_piecewise_lengths_and_order():
    message = _error(
        {"type": "piecewise_constant", "kwargs": {"boundaries": [3], "values": [1.0]}}
    )
    assert "len(boundaries) + 1 = 2" in message
    message = _error(
        {
            "type": "piecewise_constant",
            "kwargs": {"boundaries": [3, 3], "values": [1.0, 0.5, 0.1]},
        }
    )
    assert "strictly increasing" in message


def test_torch_unknown_kwarg_named_at_config_time():
    message = _error({"type": "StepLR", "kwargs": {"step_size": 2, "gama": 0.5}})
    assert "optimization.scheduler.kwargs" in message
    assert "gama" in message and "gamma" in message


def test_torch_missing_kwarg_named():
    assert "T_max" in _error({"type": "CosineAnnealingLR"})


def test_torch_constructor_error_at_build_names_kwargs():
    # OneCycleLR's own max_lr goes to the class; it still needs total_steps or
    # epochs + steps_per_epoch, which only the constructor checks.
    config = SchedulerConfig(type="OneCycleLR", kwargs={"max_lr": 0.5})
    with pytest.raises(ValueError, match=r"optimization\.scheduler\.kwargs"):
        _build_config(config, _optimizer())


@pytest.mark.parametrize("type_", ["LambdaLR", "SequentialLR", "LRScheduler"])
def test_unsupported_torch_classes(type_):
    assert "not supported" in _error({"type": type_})


def test_reduce_on_plateau_needs_epoch_stepping():
    message = _error({"type": "ReduceLROnPlateau", "step_each": "optimizer_step"})
    assert "step_each: epoch" in message


def test_step_each_errors():
    assert "['optimizer_step', 'epoch']" in _error({"step_each": "batch"})
    assert "not both" in _error({"step_each": "epoch", "step_each_iteration": True})


def test_kwargs_without_type():
    assert "without a type" in _error({"kwargs": {"gamma": 0.5}})


def test_min_lr_above_max_lr():
    message = _error({"type": "constant", "kwargs": {"min_lr": 0.2, "max_lr": 0.1}})
    assert "must not exceed" in message


def test_sequential_errors():
    child = {"type": "StepLR", "kwargs": {"step_size": 1}}
    assert "len(schedulers) - 1 = 1" in _error(
        {
            "type": "sequential",
            "kwargs": {"schedulers": [child, child], "milestones": []},
        }
    )
    clamped_child = {"type": "constant", "kwargs": {"min_lr": 0.1}}
    message = _error(
        {
            "type": "sequential",
            "kwargs": {"schedulers": [clamped_child, child], "milestones": [2]},
        }
    )
    assert "schedulers[0].kwargs" in message and "top-level" in message
    message = _error(
        {
            "type": "sequential",
            "kwargs": {"schedulers": [{"type": "x"}, child], "milestones": [2]},
        }
    )
    assert "schedulers[0].type 'x' is unknown" in message
    message = _error({"type": "sequential", "kwargs": {"schedulers": [child]}})
    assert "missing" in message and "milestones" in message


def test_ace_untyped_sequential_block_is_refused_with_the_fix():
    message = _error({"schedulers": [{"type": "StepLR"}], "milestones": []})
    assert "not supported here" in message and "type: sequential" in message
