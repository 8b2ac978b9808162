"""The core epoch loop on a toy model: one clock, ACE's epoch scheduler, resume."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fme.core.config_loading import from_dict_strict
from fme.core.distributed import DistributedContext
from fme.core.loss_weight_schedule import (
    LossWeightScheduleConfig,
    build_loss_weight_schedules,
)
from fme.core.metrics_logger import LoggingConfig, MetricsLogger
from fme.core.optimization import Optimization, OptimizationConfig
from fme.core.trainer import LATEST_CHECKPOINT, Trainer

N_BATCHES = 3
LR0 = 0.05


class Sampler:
    """Position within an epoch, as the trainer saves and restores it."""

    def __init__(self):
        self.state = {"epoch": 0, "batches_done": 0}

    def state_dict(self) -> dict[str, int]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = dict(state)


class Data:
    """``N_BATCHES`` fixed batches of ``y = 3 x`` per epoch."""

    n_batches = N_BATCHES

    def __init__(self):
        self.sampler = Sampler()
        gen = torch.Generator().manual_seed(0)
        self._x = [torch.randn(4, generator=gen) for _ in range(N_BATCHES)]

    @property
    def loader(self):
        start = self.sampler.state["batches_done"]
        return ((x, 3 * x) for x in self._x[start:])

    def set_epoch(self, epoch: int) -> None:
        self.sampler.state["epoch"] = epoch


class Output:
    def __init__(self, metrics: dict[str, float]):
        self.metrics, self.skipped = metrics, False


class ToyTrainable:
    """Fits ``w`` in ``y = w x``; its loss weight reads the optimiser clock."""

    def __init__(self, weight_schedule: dict[str, Any]):
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.weights: Any = None
        self._schedule = weight_schedule

    def bind(self, optimization: Optimization) -> None:
        self.weights = build_loss_weight_schedules(
            {"main": from_dict_strict(LossWeightScheduleConfig, self._schedule)},
            term_names=["main"],
            base_weights={},
            clock=optimization.clock,
        )

    def train_on_batch(self, batch, optimization: Optimization, *, where: str):
        x, y = batch
        metrics = self.weights.metrics()  # the weights this step uses
        loss = metrics["loss_weight/main"] * ((self.w * x - y) ** 2).mean()
        optimization.accumulate_loss(loss)
        optimization.step_weights()
        return Output({"loss": float(loss.detach()), **metrics})

    def validate_on_batch(self, batch):
        x, y = batch
        return Output({"loss": float(((self.w * x - y) ** 2).mean().detach())})

    def get_state(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone(), "weights": self.weights.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.weights.load_state_dict(state["weights"])


def _trainer(tmp_path: Path, *, max_epochs: int, max_steps: int | None = None):
    trainable = ToyTrainable({"type": "linear", "start": 1.0, "end": 0.0, "n_steps": 8})
    optimization = from_dict_strict(
        OptimizationConfig,
        {
            "optimizer_type": "SGD",
            "lr": LR0,
            "scheduler": {"type": "StepLR", "kwargs": {"step_size": 1, "gamma": 0.5}},
        },
    ).build([trainable.w])
    trainable.bind(optimization)
    dist = DistributedContext()
    trainer = Trainer(
        trainable=trainable,
        optimization=optimization,
        train_data=Data(),
        validation_data=Data(),
        dist=dist,
        logger=MetricsLogger(
            config=LoggingConfig(log_to_screen=False, log_to_file=False),
            experiment_dir=tmp_path,
            dist=dist,
        ),
        checkpoint_dir=tmp_path / "checkpoints",
        max_epochs=max_epochs,
        max_steps=max_steps,
        batch_log_interval=1,
    )
    return trainer, trainable


def test_torch_scheduler_steps_per_epoch_and_loss_weights_per_step(tmp_path):
    trainer, _ = _trainer(tmp_path, max_epochs=2)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    batches = [r for r in records if "batch_loss" in r]
    assert [r["optimizer_step"] for r in batches] == [1, 2, 3, 4, 5, 6]
    # the learning rate halves at each epoch's end (ACE's default), not per step
    assert [r["lr"] for r in batches] == pytest.approx([LR0] * 3 + [LR0 / 2] * 3)
    # the loss weight used by step t + 1 is w(t) = 1 - t / 8, on the same clock
    expected = [1 - t / 8 for t in range(6)]
    assert [r["loss_weight/main"] for r in batches] == pytest.approx(expected)
    epochs = [r for r in records if "train/mean/loss" in r]
    assert [r["lr"] for r in epochs] == pytest.approx([LR0 / 2, LR0 / 4])


def test_resume_mid_epoch_continues_exactly(tmp_path):
    full, full_model = _trainer(tmp_path / "full", max_epochs=2)
    full.train()
    cut, _ = _trainer(tmp_path / "cut", max_epochs=2, max_steps=4)
    cut.train()
    state = torch.load(tmp_path / "cut" / "checkpoints" / LATEST_CHECKPOINT)
    assert state["optimization"]["optimizer_steps"] == 4
    assert state["trainable"]["weights"]["t"] == 4
    resumed, resumed_model = _trainer(tmp_path / "cut", max_epochs=2)
    resumed.train()
    assert resumed.optimization.optimizer_steps == 6
    assert resumed.optimization.learning_rate == pytest.approx(
        full.optimization.learning_rate
    )
    assert resumed_model.weights.t == full_model.weights.t == 6
    torch.testing.assert_close(resumed_model.w.detach(), full_model.w.detach())
