import json
import math
from typing import Any

import pytest
import torch

from fme.core.config_loading import ConfigError, from_dict_strict
from fme.core.loss_weight_schedule import (
    LossWeightScheduleConfig,
    LossWeightSchedules,
    build_loss_weight_schedules,
    check_loss_weight_schedule_terms,
)
from fme.core.optimization import OptimizerClock

TERMS = ["main", "corrector_regularization", "global_mean"]


def _config(**fields: Any) -> LossWeightScheduleConfig:
    return from_dict_strict(LossWeightScheduleConfig, fields)


# the optimiser clock each set of schedules reads (Optimization owns it in training)
_CLOCKS: dict[int, OptimizerClock] = {}


def _schedules(
    configs: dict[str, dict[str, Any]], base_weights: dict[str, float] | None = None
) -> LossWeightSchedules:
    clock = OptimizerClock()
    schedules = build_loss_weight_schedules(
        {name: _config(**fields) for name, fields in configs.items()},
        term_names=TERMS,
        base_weights=base_weights or {},
        clock=clock,
    )
    _CLOCKS[id(schedules)] = clock
    return schedules


def _step(schedules: LossWeightSchedules, term_losses: Any = None) -> None:
    """One optimiser step: the step's losses are observed, then the clock ticks."""
    schedules.observe(term_losses or {})
    _CLOCKS[id(schedules)].tick()


@pytest.mark.parametrize("t", [0, 1, 25_000, 50_000, 100_000, 300_000])
def test_exponential_closed_form(t: int):
    schedule = _config(type="exponential", start=1000.0, end=1.0, n_steps=100_000)
    expected = 1000.0 * (1.0 / 1000.0) ** (min(t, 100_000) / 100_000)
    assert schedule.build().value(t) == pytest.approx(expected, rel=1e-12)


def test_exponential_landmarks():
    schedule = _config(type="exponential", start=1000.0, end=1.0, n_steps=100_000)
    weight = schedule.build()
    assert weight.value(0) == pytest.approx(1000.0)
    assert weight.value(50_000) == pytest.approx(math.sqrt(1000.0))
    assert weight.value(100_000) == pytest.approx(1.0)
    assert weight.value(10**7) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "t, expected", [(0, 2.0), (2, 1.5), (4, 1.0), (8, 0.0), (20, 0.0)]
)
def test_linear_closed_form(t: int, expected: float):
    weight = _config(type="linear", start=2.0, end=0.0, n_steps=8).build()
    assert weight.value(t) == pytest.approx(expected)


@pytest.mark.parametrize("t", [0, 1, 3, 6, 7, 12, 50])
def test_cosine_closed_form(t: int):
    weight = _config(type="cosine", start=3.0, end=1.0, n_steps=12).build()
    expected = 1.0 + 2.0 * (1 + math.cos(math.pi * min(t, 12) / 12)) / 2
    assert weight.value(t) == pytest.approx(expected)
    if t == 6:
        assert weight.value(t) == pytest.approx(2.0)


def test_constant_and_piecewise():
    assert _config(type="constant", value=0.3).build().value(10**6) == 0.3
    weight = _config(
        type="piecewise_constant", boundaries=[3, 10], values=[5.0, 2.0, 0.0]
    ).build()
    got = [weight.value(t) for t in (0, 2, 3, 9, 10, 1000)]
    assert got == [5.0, 5.0, 2.0, 2.0, 0.0, 0.0]


def test_effective_weight_is_schedule_times_base_and_steps_count():
    schedules = _schedules(
        {
            "corrector_regularization": {
                "type": "linear",
                "start": 4,
                "end": 0,
                "n_steps": 4,
            }
        },
        base_weights={"corrector_regularization": 0.5, "global_mean": 0.2},
    )
    seen = []
    for _ in range(6):
        seen.append(schedules.weights())
        _step(schedules)
    assert schedules.t == 6
    assert [w["corrector_regularization"] for w in seen] == pytest.approx(
        [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    )
    assert all(w["main"] == 1.0 and w["global_mean"] == 0.2 for w in seen)


def test_metrics_and_weight_tensors():
    schedules = _schedules(
        {"main": {"type": "constant", "value": 3.0}},
        base_weights={"corrector_regularization": 0.1},
    )
    assert schedules.metrics() == {
        "loss_weight/main": 3.0,
        "loss_weight/corrector_regularization": 0.1,
        "loss_weight/global_mean": 1.0,
    }
    tensors = schedules.weight_tensors(torch.device("cpu"), dtype=torch.float64)
    assert set(tensors) == set(TERMS)
    assert tensors["main"].dtype == torch.float64
    assert tensors["main"].device.type == "cpu"
    assert not tensors["main"].requires_grad
    assert tensors["corrector_regularization"].item() == pytest.approx(0.1)


def test_adaptive_matches_hand_computation():
    schedules = _schedules(
        {
            "main": {"type": "adaptive", "target": 2.0, "ema_decay": 0.5},
            "global_mean": {"type": "adaptive", "start": 5.0, "max_value": 0.25},
        },
        base_weights={"global_mean": 2.0},
    )
    # Before any loss: start (default 1) times base.
    assert schedules.weights()["main"] == 1.0
    assert schedules.weights()["global_mean"] == 10.0
    steps = [(4.0, 1.0), (2.0, 0.5), (1.0, 8.0)]
    expected_main = [2 / 4.0, 2 / (0.5 * 4 + 0.5 * 2), 2 / (0.5 * 3 + 0.5 * 1)]
    # global_mean: target 1, no smoothing, clipped to 0.25 from above, base 2.
    expected_global = [2 * min(0.25, 1 / 1.0), 2 * 0.25, 2 * (1 / 8.0)]
    for (main_loss, global_loss), w_main, w_global in zip(
        steps, expected_main, expected_global, strict=True
    ):
        _step(
            schedules,
            {
                "main": main_loss,
                "global_mean": global_loss,
                "corrector_regularization": 7,
            },
        )
        weights = schedules.weights()
        assert weights["main"] == pytest.approx(w_main)
        assert weights["global_mean"] == pytest.approx(w_global)
        assert weights["corrector_regularization"] == 1.0
    assert expected_main[-1] == pytest.approx(1.0)


def test_adaptive_with_grad_tensors_gives_plain_floats():
    parameter = torch.nn.Parameter(torch.tensor(2.0))
    loss = parameter**2  # 4.0, requires grad
    schedules = _schedules({"main": {"type": "adaptive", "target": 1.0}})
    _step(schedules, {"main": loss})
    weights = schedules.weights()
    assert type(weights["main"]) is float
    assert weights["main"] == pytest.approx(0.25)
    assert not schedules.weight_tensors("cpu")["main"].requires_grad
    (weights["main"] * loss).backward()
    # d/dp (w * p^2) = 2 w p with w a constant: no gradient through w.
    assert parameter.grad is not None
    assert parameter.grad.item() == pytest.approx(2 * 0.25 * 2.0)


def test_adaptive_errors():
    schedules = _schedules({"main": {"type": "adaptive"}})
    with pytest.raises(ValueError, match=r"\['main'\]"):
        _step(schedules)
    with pytest.raises(ValueError, match="'main' is nan at optimiser step 1"):
        _step(schedules, {"main": float("nan")})
    with pytest.raises(ValueError, match="unknown loss term"):
        _step(schedules, {"main": 1.0, "mian": 1.0})
    with pytest.raises(ValueError, match="scalars"):
        _step(schedules, {"main": torch.ones(2)})
    assert schedules.t == 0  # failed steps do not advance the clock


def test_state_dict_round_trip_continues_identically():
    configs = {
        "main": {"type": "adaptive", "target": 1.0, "ema_decay": 0.9},
        "corrector_regularization": {
            "type": "exponential",
            "start": 100.0,
            "end": 1.0,
            "n_steps": 5,
        },
    }
    losses = [{"main": 1.0 + 0.5 * k} for k in range(8)]

    def run(schedules: LossWeightSchedules, batch: list[dict[str, float]]):
        out = []
        for term_losses in batch:
            _step(schedules, term_losses)
            out.append(schedules.weights())
        return out

    uninterrupted = run(_schedules(configs), losses)
    first_run = _schedules(configs)
    first = run(first_run, losses[:3])
    state = json.loads(json.dumps(first_run.state_dict()))  # plain data
    resumed = _schedules(configs)
    resumed.load_state_dict(state)
    assert resumed.t == 3
    assert resumed.weights() == first[-1]
    assert first + run(resumed, losses[3:]) == uninterrupted


def test_unknown_term_lists_valid_names():
    with pytest.raises(ValueError) as info:
        _schedules({"boundary": {"type": "constant", "value": 1.0}})
    message = str(info.value)
    assert "boundary" in message
    assert "['corrector_regularization', 'global_mean', 'main']" in message
    with pytest.raises(ValueError, match="global_mean"):
        check_loss_weight_schedule_terms(
            {"global_mean": _config(type="constant", value=1.0)}, term_names=["main"]
        )


@pytest.mark.parametrize(
    "fields, fragments",
    [
        ({"type": "expo"}, ["'expo'", "adaptive", "piecewise_constant"]),
        ({"type": "exponential", "start": 1.0, "end": 2.0}, ["needs", "n_steps"]),
        (
            {"type": "linear", "start": 1.0, "end": 2.0, "n_steps": 3, "value": 1.0},
            ["does not take ['value']", "'n_steps'"],
        ),
        ({"type": "exponential", "start": 0.0, "end": 1.0, "n_steps": 3}, ["start"]),
        ({"type": "cosine", "start": 1, "end": 0, "n_steps": 0}, ["n_steps", ">= 1"]),
        ({"type": "adaptive", "ema_decay": 1.0}, ["ema_decay", "[0, 1)"]),
        ({"type": "constant", "value": True}, ["value must be a number"]),
        (
            {"type": "piecewise_constant", "boundaries": [2], "values": [1.0]},
            ["len(boundaries) + 1 = 2"],
        ),
        ({"type": "constant", "valu": 1.0}, ["valu"]),
    ],
)
def test_config_errors_name_fields(fields, fragments):
    with pytest.raises(ConfigError) as info:
        from_dict_strict(LossWeightScheduleConfig, fields)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_yaml_block_loads_as_dict_of_configs():
    import dataclasses

    @dataclasses.dataclass
    class Holder:
        loss_weight_schedules: dict[str, LossWeightScheduleConfig]

    holder = from_dict_strict(
        Holder,
        {
            "loss_weight_schedules": {
                "corrector_regularization": {
                    "type": "exponential",
                    "start": 1000.0,
                    "end": 1.0,
                    "n_steps": 100000,
                }
            }
        },
    )
    config = holder.loss_weight_schedules["corrector_regularization"]
    assert config.build().value(100_000) == pytest.approx(1.0)


def test_former_flat_spelling_is_migrated_to_type_and_kwargs():
    flat = _config(type="linear", start=2.0, end=0.0, n_steps=8)
    block = from_dict_strict(
        LossWeightScheduleConfig,
        {"type": "linear", "kwargs": {"start": 2.0, "end": 0.0, "n_steps": 8}},
    )
    assert flat == block
    assert flat.build().value(4) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="under kwargs"):
        from_dict_strict(
            LossWeightScheduleConfig,
            {"type": "linear", "start": 2.0, "kwargs": {"end": 0.0, "n_steps": 8}},
        )


def test_sequential_and_warmup_cosine_weights():
    weight = _config(
        type="sequential",
        schedulers=[
            {"type": "constant", "kwargs": {"value": 2.0}},
            {"type": "linear", "kwargs": {"start": 1.0, "end": 0.0, "n_steps": 2}},
        ],
        milestones=[3],
    ).build()
    assert [weight.value(t) for t in range(7)] == [2, 2, 2, 1, 0.5, 0, 0]
    with pytest.raises(ConfigError, match="'adaptive' is unknown"):
        _config(type="sequential", schedulers=[{"type": "adaptive"}], milestones=[])
    warm = _config(
        type="warmup_cosine", start=0.0, peak=1.0, end=0.0, warmup_steps=2, n_steps=4
    ).build()
    assert [warm.value(t) for t in range(5)] == pytest.approx([0, 0.5, 1, 0.5, 0])
