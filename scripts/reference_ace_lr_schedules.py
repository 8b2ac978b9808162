"""Learning rates the released ACE package gives its scheduler configs.

Runs with the released ``fme`` (ACE) in its own virtualenv, from outside any
checkout, and writes the small JSON that ``tests/core/test_optimization.py``
compares with::

    cd /tmp && <ace-venv>/bin/python <repo>/scripts/reference_ace_lr_schedules.py \\
        <repo>/tests/core/data/ace_lr_schedules.json

Each case trains one parameter for ``N_EPOCHS`` epochs of ``N_BATCHES`` batches
the way ACE's trainer drives its optimisation: ``step_weights`` and
``step_scheduler(is_iteration=True)`` after every batch,
``step_scheduler(valid_loss=..., is_iteration=False)`` after every epoch. It
records the learning rate each batch uses.
"""

import json
import sys

import torch

from fme.core.optimization import OptimizationConfig

N_EPOCHS, N_BATCHES, LR0 = 3, 4, 0.1
VALID_LOSSES = [1.0, 2.0, 3.0]  # no improvement after the first epoch
CASES = {
    "step_lr_default": {"type": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}},
    "step_lr_each_iteration": {
        "type": "StepLR",
        "kwargs": {"step_size": 2, "gamma": 0.5},
        "step_each_iteration": True,
    },
    "exponential_lr_default": {"type": "ExponentialLR", "kwargs": {"gamma": 0.9}},
    "cosine_annealing_each_iteration": {
        "type": "CosineAnnealingLR",
        "kwargs": {"T_max": 6},
        "step_each_iteration": True,
    },
    "plateau_default": {
        "type": "ReduceLROnPlateau",
        "kwargs": {"patience": 0, "factor": 0.5},
    },
}


def run(scheduler: dict) -> list[float]:
    module = torch.nn.Linear(1, 1, bias=False)
    config = OptimizationConfig(optimizer_type="Adam", lr=LR0, scheduler=scheduler)
    optimization = config.build(torch.nn.ModuleList([module]), max_epochs=N_EPOCHS)
    rates = []
    for epoch in range(N_EPOCHS):
        for _ in range(N_BATCHES):
            rates.append(optimization.learning_rate)
            optimization.accumulate_loss(module(torch.ones(1, 1)).sum() ** 2)
            optimization.step_weights()
            optimization.step_scheduler(is_iteration=True)
        optimization.step_scheduler(valid_loss=VALID_LOSSES[epoch], is_iteration=False)
    rates.append(optimization.learning_rate)
    return rates


def main() -> None:
    from fme.core.scheduler import SchedulerConfig

    results = {
        name: {"scheduler": case, "rates": run(SchedulerConfig(**case))}
        for name, case in CASES.items()
    }
    meta = {"n_epochs": N_EPOCHS, "n_batches": N_BATCHES, "lr": LR0}
    with open(sys.argv[1], "w") as f:
        json.dump(
            {"meta": {**meta, "valid_losses": VALID_LOSSES}, "cases": results},
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
