"""Phase configs: inheritance, limits on the global clock, config errors."""

from pathlib import Path

import pytest

from fme.ace.train.config import load_train_config
from fme.ace.train.phases import PhaseProgress
from fme.core.config_loading import ConfigError

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "shallow_water.yaml"
ADAM = "{optimizer_type: Adam, lr: 0.001}"
LBFGS = "{optimizer_type: LBFGS, lr: 1.0, kwargs: {max_iter: 3}}"
SCHEDULE = "{main: {type: linear, start: 1.0, end: 0.5, n_steps: 10}}"


def _config(*overrides: str):
    return load_train_config(CONFIG, list(overrides))


def test_without_phases_the_run_is_one_phase_of_top_level_settings():
    config = _config("max_epochs=3", "max_steps=50")
    (phase,) = config.resolved_phases()
    assert (phase.index, phase.max_epochs, phase.max_steps) == (0, 3, None)
    assert phase.optimization is config.optimization
    assert phase.stepper_training is config.stepper_training
    assert phase.lora is None and not phase.frozen_parameters.include
    assert PhaseProgress().trainer_limits(phase, run_max_steps=50) == (3, 50)


def test_null_fields_inherit_from_the_previous_phase():
    config = _config(
        "stepper_training.parameter_init.frozen_parameters={include: [encoder.*]}",
        f"phases=[{{name: pre, max_epochs: 2, n_forward_steps: 1, optimization: {ADAM}}},"
        f" {{max_steps: 5, loss_weight_schedules: {SCHEDULE}}},"
        f" {{max_steps: 4, optimization: {LBFGS}, frozen_parameters: {{}},"
        " lora: {rank: 2, target_modules: [decoder.*]}}]",
    )
    pre, multi, polish = config.resolved_phases()
    assert pre.label == "phase 0 (pre)" and polish.label == "phase 2"
    assert pre.optimization.optimizer_type == "Adam"
    assert multi.optimization is pre.optimization
    assert polish.optimization.optimizer_type == "LBFGS"
    assert [p.stepper_training.n_forward_steps for p in (pre, multi, polish)] == [1] * 3
    assert pre.stepper_training.loss_weight_schedules == {}
    assert multi.stepper_training.loss_weight_schedules["main"].end == 0.5
    assert polish.stepper_training.loss_weight_schedules["main"].end == 0.5
    assert [p.carries_loss_weights for p in (pre, multi, polish)] == [True, False, True]
    assert (
        pre.frozen_parameters.include
        == multi.frozen_parameters.include
        == ["encoder.*"]
    )
    assert polish.frozen_parameters.include == []
    assert pre.lora is None and polish.lora is not None and polish.lora.rank == 2
    # the top-level rollout length is untouched
    assert config.stepper_training.n_forward_steps == 2


def test_phase_limits_are_on_the_global_clock():
    config = _config(
        "max_epochs=7",
        "phases=[{max_epochs: 2}, {max_steps: 5, max_epochs: 1}, {max_steps: 3}, {}]",
    )
    first, second, third, fourth = config.resolved_phases()
    assert (first.max_epochs, first.max_steps) == (2, None)
    assert (fourth.max_epochs, fourth.max_steps) == (7, None)
    progress = PhaseProgress(index=1, start_step=40, start_epoch=2)
    assert progress.trainer_limits(second, run_max_steps=None) == (3, 45)
    assert progress.trainer_limits(second, run_max_steps=42) == (3, 42)
    assert not progress.phase_finished(second, epoch=2, step=42)
    assert progress.phase_finished(second, epoch=2, step=45)
    assert progress.phase_finished(second, epoch=3, step=43)
    later = PhaseProgress(index=2, start_step=45, start_epoch=3)
    assert later.trainer_limits(third, run_max_steps=None) == (None, 48)
    assert PhaseProgress.from_state(later.to_state()) == later
    assert PhaseProgress.from_state(None) == PhaseProgress()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["phases=[]"], "at least one phase"),
        (["phases=[{max_steps: 0}]"], "max_steps must be >= 1"),
        (
            [
                "phases=[{max_steps: 2, optimization: {optimizer_type: LBFGS,"
                " use_gradient_accumulation: true}}]"
            ],
            "use_gradient_accumulation: false",
        ),
        (["phases=[{max_steps: 2, lora: {rank: 0, target_modules: [x]}}]"], "rank"),
        (["phases=[{max_steps: 2, unknown: 1}]"], "unknown"),
    ],
)
def test_phase_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(*overrides)
