"""The epoch loop: train, validate, log, checkpoint, resume.

The trainer knows nothing about the atmosphere: it drives any object that
trains on a batch and has state, over any data source with a resumable
sampler.
"""

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from fme.core.checkpoint import (
    load_checkpoint,
    remove_stale_temporary_files,
    save_checkpoint,
)
from fme.core.distributed import DistributedContext
from fme.core.ema import EMATracker
from fme.core.loss_weight_schedule import METRIC_PREFIX as LOSS_WEIGHT_PREFIX
from fme.core.metrics_aggregator import MeanAggregator
from fme.core.metrics_logger import MetricsLogger
from fme.core.nonfinite import NonFiniteError, first_nonfinite_tensor
from fme.core.optimization import Optimization
from fme.core.progress import Progress
from fme.core.rng_state import get_rng_state, set_rng_state

LATEST_CHECKPOINT = "ckpt.tar"
BEST_CHECKPOINT = "best_ckpt.tar"
BEST_INFERENCE_CHECKPOINT = "best_inference_ckpt.tar"


class BatchOutput(Protocol):
    """What a trainable returns for one batch."""

    metrics: dict[str, float]
    skipped: bool


class Trainable(Protocol):
    """The model side of training, e.g. ``TrainStepper``."""

    def train_on_batch(
        self, batch: Any, optimization: Optimization, *, where: str
    ) -> BatchOutput: ...

    def validate_on_batch(self, batch: Any) -> BatchOutput: ...

    def get_state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


class ResumableSampler(Protocol):
    """A batch sampler that knows its position within an epoch."""

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class DataSource(Protocol):
    """Batches of one epoch, reseedable per epoch."""

    @property
    def loader(self) -> Iterable[Any]: ...

    @property
    def sampler(self) -> ResumableSampler: ...

    @property
    def n_batches(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def _batch_size(batch: Any) -> int:
    return int(getattr(batch, "batch_size", 1))


class Trainer:
    """Runs epochs of training and validation with checkpoints and resume.

    Args:
        trainable: the model side (train/validate on a batch, state).
        optimization: the optimiser and its clock.
        train_data: training batches.
        validation_data: validation batches, or None.
        dist: the distributed context (rank 0 writes files).
        logger: where metrics go.
        checkpoint_dir: where ``ckpt.tar`` and ``best_ckpt.tar`` live.
        max_epochs: stop when the epoch count reaches this (None: no limit).
        max_steps: also stop after this many optimiser steps (None: no limit);
            the run can be resumed later with a larger limit.
        save_checkpoint: write checkpoints at all.
        checkpoint_every_n_steps: also checkpoint mid-epoch this often.
        run_config: the whole config, stored in checkpoints.
        best_metric: the validation metric selecting ``best_ckpt.tar``.
        best_inference_metric: an ``end_of_epoch`` metric whose lowest value
            selects ``best_inference_ckpt.tar`` (written with the validated
            weights, like ``best_ckpt.tar``), or None for no such checkpoint;
            its best value is logged as ``best_<metric>``.
        batch_log_interval: log ``batch_`` metrics every this many steps.
        end_of_epoch: called after validation with the epoch; returns extra
            metrics (e.g. inline inference) to log with the epoch summary.
        start_epoch: the epoch count to start from (a later training phase).
        phase: plain data stored in every checkpoint under ``phase`` (which
            training phase this is), or None.
        ema: the moving average of the weights, updated after every optimiser
            step and saved in checkpoints, or None.
        validate_using_ema: validate, run ``end_of_epoch`` and write
            ``best_ckpt.tar`` with the averaged weights in place (ACE's
            ``validate_using_ema``).
    """

    def __init__(
        self,
        *,
        trainable: Trainable,
        optimization: Optimization,
        train_data: DataSource,
        validation_data: DataSource | None,
        dist: DistributedContext,
        logger: MetricsLogger,
        checkpoint_dir: Path,
        max_epochs: int | None,
        max_steps: int | None = None,
        save_checkpoint: bool = True,
        checkpoint_every_n_steps: int | None = None,
        run_config: dict[str, Any] | None = None,
        best_metric: str = "val/mean/loss",
        best_inference_metric: str | None = None,
        batch_log_interval: int = 10,
        end_of_epoch: Callable[[int], dict[str, float]] | None = None,
        start_epoch: int = 0,
        phase: dict[str, Any] | None = None,
        ema: EMATracker | None = None,
        validate_using_ema: bool = False,
    ):
        if validate_using_ema and ema is None:
            raise ValueError("validate_using_ema needs an EMA tracker")
        self.trainable = trainable
        self.optimization = optimization
        self.train_data = train_data
        self.validation_data = validation_data
        self.dist = dist
        self.logger = logger
        self.checkpoint_dir = Path(checkpoint_dir)
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.save_checkpoints = save_checkpoint
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.run_config = run_config or {}
        self.best_metric = best_metric
        self.batch_log_interval = batch_log_interval
        self.end_of_epoch = end_of_epoch
        self.phase = phase
        self.ema = ema
        self.validate_using_ema = validate_using_ema
        self.epoch = start_epoch
        self.best_value = float("inf")
        self.best_inference_metric = best_inference_metric
        self.best_inference_value = float("inf")
        self._epoch_metrics = MeanAggregator()
        self._resume_sampler_state: dict[str, int] | None = None
        self._batches_done = 0
        # (file, optimizer step) of the newest checkpoint this run wrote or read
        self._last_checkpoint: tuple[Path, int] | None = None

    @property
    def latest_checkpoint_path(self) -> Path:
        """The checkpoint written after every epoch (and mid-epoch if set)."""
        return self.checkpoint_dir / LATEST_CHECKPOINT

    def _done(self) -> bool:
        return (self.max_epochs is not None and self.epoch >= self.max_epochs) or (
            self.max_steps is not None
            and self.optimization.optimizer_steps >= self.max_steps
        )

    @property
    def next_phase_epoch(self) -> int:
        """The epoch a following training phase starts at.

        The current epoch count, plus one if the current epoch is partly done
        (a phase that ended on ``max_steps`` mid-epoch).
        """
        position = self._resume_sampler_state or {"batches_done": self._batches_done}
        partly_done = 0 < position["batches_done"] < self.train_data.n_batches
        return self.epoch + (1 if partly_done else 0)

    def train(self, *, resume: bool = True) -> None:
        """Train until ``max_epochs`` or ``max_steps``.

        Args:
            resume: continue from ``ckpt.tar`` if it exists (False when a new
                training phase starts from the weights already loaded).
        """
        if self.dist.is_root:
            for path in remove_stale_temporary_files(self.checkpoint_dir):
                logging.info("removed %s, left by a checkpoint write killed", path)
        if resume and self.latest_checkpoint_path.is_file():
            self.resume(self.latest_checkpoint_path)
        while not self._done():
            finished_epoch = self._train_epoch()
            if not finished_epoch:
                break
            self.epoch += 1
            summary = self._epoch_metrics.get_means(self.dist)
            self._epoch_metrics = MeanAggregator()
            train_means = {f"train/mean/{k}": v for k, v in summary.items()}
            with self._validation_weights():
                val_means = self._validate()
                extra = self.end_of_epoch(self.epoch) if self.end_of_epoch else {}
            self.optimization.step_epoch(
                metric=val_means.get(
                    "val/mean/loss", train_means.get("train/mean/loss")
                )
            )
            record = {**train_means, **val_means, **extra}
            record["lr"] = self.optimization.learning_rate
            is_best = (
                self.best_metric in record
                and record[self.best_metric] < self.best_value
            )
            if is_best:
                self.best_value = record[self.best_metric]
            is_best_inference = self._update_best_inference(record)
            self.logger.log(
                record,
                optimizer_step=self.optimization.optimizer_steps,
                epoch=self.epoch,
            )
            logging.info(
                "epoch %d: train loss %.4g%s",
                self.epoch,
                record.get("train/mean/loss", float("nan")),
                f", val loss {record['val/mean/loss']:.4g}"
                if "val/mean/loss" in record
                else "",
            )
            self._save(best=is_best, best_inference=is_best_inference)
        self._save(best=False)

    def _update_best_inference(self, record: dict[str, float]) -> bool:
        """Record a new lowest ``best_inference_metric``; log the best so far."""
        metric = self.best_inference_metric
        if metric is None or metric not in record:
            return False
        is_best = record[metric] < self.best_inference_value
        if is_best:
            self.best_inference_value = record[metric]
        record[f"best_{metric}"] = self.best_inference_value
        return is_best

    def _train_epoch(self) -> bool:
        """Train on the rest of this epoch; False if ``max_steps`` stopped it."""
        self.train_data.set_epoch(self.epoch)
        position = self._sampler_position
        self.train_data.sampler.load_state_dict(position)
        # counted here, not read from the sampler: loader workers prefetch indices
        self._batches_done = position["batches_done"]
        self._resume_sampler_state = None
        start = time.perf_counter()
        n_samples = 0
        progress = Progress(
            epoch=self.epoch + 1,
            n_epochs=self.max_epochs,
            n_batches=self.train_data.n_batches,
            done=self._batches_done,
            interval=self.logger.config.progress_log_interval,
            enabled=self.dist.is_root and self.logger.config.log_to_screen,
        )
        for batch in self.train_data.loader:
            batch_index = self._batches_done
            try:
                out = self.trainable.train_on_batch(
                    batch,
                    self.optimization,
                    where=f"epoch {self.epoch}, batch {batch_index}",
                )
            except NonFiniteError as err:
                raise type(err)(f"{err}; {self._checkpoint_truth()}") from None
            self._batches_done += 1
            if self.ema is not None and not out.skipped:
                self.ema.update()
            n = _batch_size(batch) * self.dist.world_size
            n_samples += n
            self._epoch_metrics.record_all(out.metrics, count=n)
            step = self.optimization.optimizer_steps
            loss = out.metrics.get("loss")
            progress.update(
                step=step,
                loss=None if loss is None else float(loss),
                n_samples=n,
            )
            if not out.skipped and step % self.batch_log_interval == 0:
                elapsed = time.perf_counter() - start
                # loss weights are state of the clock, logged under their own name
                batch_metrics = {
                    k if k.startswith(LOSS_WEIGHT_PREFIX) else f"batch_{k}": v
                    for k, v in out.metrics.items()
                }
                batch_metrics["lr"] = self.optimization.learning_rate
                batch_metrics["samples_per_second"] = n_samples / max(elapsed, 1e-9)
                self.logger.log(batch_metrics, optimizer_step=step, epoch=self.epoch)
            if (
                self.checkpoint_every_n_steps is not None
                and step % self.checkpoint_every_n_steps == 0
            ):
                self._save(best=False)
            if self.max_steps is not None and step >= self.max_steps:
                progress.close()
                return self._batches_done >= self.train_data.n_batches
        progress.close()
        return True

    @property
    def _sampler_position(self) -> dict[str, int]:
        return self._resume_sampler_state or {
            "epoch": self.epoch,
            "batches_done": 0,
        }

    @contextlib.contextmanager
    def _validation_weights(self) -> Iterator[None]:
        """The averaged weights in place if ``validate_using_ema``."""
        if self.validate_using_ema and self.ema is not None:
            with self.ema.applied():
                yield
        else:
            yield

    def _validate(self) -> dict[str, float]:
        if self.validation_data is None:
            return {}
        self.validation_data.set_epoch(0)
        aggregator = MeanAggregator()
        for batch in self.validation_data.loader:
            out = self.trainable.validate_on_batch(batch)
            aggregator.record_all(out.metrics, count=_batch_size(batch))
        return {f"val/mean/{k}": v for k, v in aggregator.get_means(self.dist).items()}

    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue training exactly."""
        sampler_state = {"epoch": self.epoch, "batches_done": self._batches_done}
        if self._batches_done >= self.train_data.n_batches:
            sampler_state = {"epoch": self.epoch, "batches_done": 0}
        state: dict[str, Any] = {
            "config": self.run_config,
            "trainable": self.trainable.get_state(),
            "optimization": self.optimization.get_state(),
            "trainer": {
                "epoch": self.epoch,
                "best_value": self.best_value,
                "best_inference_value": self.best_inference_value,
                "sampler": sampler_state,
                "epoch_metrics": self._epoch_metrics.get_state(),
                "rng": get_rng_state(),
            },
        }
        if self.phase is not None:
            state["phase"] = self.phase
        if self.ema is not None:
            state["ema"] = self.ema.get_state()
        return state

    def _checkpoint_truth(self) -> str:
        """Which checkpoint a stopped run leaves, for error messages."""
        if not self.save_checkpoints:
            return "no checkpoint was written (save_checkpoint: false)"
        if self._last_checkpoint is None:
            return "training stopped; no checkpoint was written in this run"
        path, step = self._last_checkpoint
        return (
            f"training stopped; the last checkpoint, {path} at optimizer step "
            f"{step}, was written before this and is intact"
        )

    def _finite_state(self, name: str) -> dict[str, Any]:
        """The state to checkpoint, refused if a weight or optimiser state is bad."""
        state = self.get_state()
        bad = first_nonfinite_tensor(
            {"trainable": state["trainable"], "optimization": state["optimization"]}
        )
        if bad is not None:
            raise NonFiniteError(
                f"{bad} is not finite at optimizer step "
                f"{self.optimization.optimizer_steps}; {name} was not written "
                f"and {self._checkpoint_truth()}"
            )
        return state

    def save_as(self, name: str) -> None:
        """Write the current state to ``checkpoint_dir/name`` (e.g. a phase's end)."""
        if not self.save_checkpoints:
            return
        state = self._finite_state(name)
        if self.dist.is_root:
            save_checkpoint(state, self.checkpoint_dir / name)
        self.dist.barrier()

    def _save(self, *, best: bool, best_inference: bool = False) -> None:
        if not self.save_checkpoints:
            return
        state = self._finite_state(LATEST_CHECKPOINT)
        if self.dist.is_root:
            # best first: a kill between the writes leaves ckpt.tar older than
            # best_ckpt.tar (the epoch re-runs), never best_ckpt.tar stale
            bests = [
                name
                for name, due in (
                    (BEST_INFERENCE_CHECKPOINT, best_inference),
                    (BEST_CHECKPOINT, best),
                )
                if due
            ]
            if bests:
                # the weights that were validated (saved inside: the state
                # holds references to the parameters)
                with self._validation_weights():
                    best_state = self.get_state()
                    for name in bests:
                        save_checkpoint(best_state, self.checkpoint_dir / name)
            save_checkpoint(state, self.latest_checkpoint_path)
        self._last_checkpoint = (
            self.latest_checkpoint_path,
            self.optimization.optimizer_steps,
        )
        self.dist.barrier()

    def _repair_best_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Make ``best_ckpt.tar`` hold the best value ``ckpt.tar`` records.

        Runs written before the best-first write order could be killed after
        ``ckpt.tar`` (holding a new best) and before ``best_ckpt.tar``; that
        ``ckpt.tar`` was written at the end of the epoch reaching the best,
        so it is the best state.
        """
        if not (self.dist.is_root and self.save_checkpoints):
            return
        trainer_state = state["trainer"]
        best_value = float(trainer_state["best_value"])
        if not math.isfinite(best_value):
            return
        best_path = self.checkpoint_dir / BEST_CHECKPOINT
        recorded = float("inf")
        if best_path.is_file():
            recorded = float(load_checkpoint(best_path)["trainer"]["best_value"])
        if recorded <= best_value:
            return
        if trainer_state.get("sampler", {}).get("batches_done", 0) != 0:
            logging.warning(
                "%s records best %s = %.6g but %s holds %.6g, and %s is not "
                "from the end of that epoch, so it cannot replace it",
                path,
                self.best_metric,
                best_value,
                best_path,
                recorded,
                path,
            )
            return
        save_checkpoint(state, best_path)
        logging.warning(
            "repaired %s: it was older than the best %s = %.6g recorded in %s "
            "(it held %s); replaced it with %s, written when that best was reached",
            best_path,
            self.best_metric,
            best_value,
            path,
            "nothing" if recorded == float("inf") else f"{recorded:.6g}",
            path,
        )

    def resume(self, path: Path) -> None:
        """Continue from checkpoint ``path``."""
        state = load_checkpoint(path)
        if "optimization" not in state:
            raise ValueError(
                f"checkpoint {str(path)!r} (migrated from format "
                f"{state.get('migrated_from_format', '?')}) has no optimiser state "
                "and cannot be resumed; start a new experiment_dir and fine-tune "
                "from it with stepper_training.parameter_init.weights_path"
            )
        # the clock first: the trainable's schedules find their position on it
        self.optimization.load_state(state["optimization"])
        self.trainable.load_state(state["trainable"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError(
                    f"checkpoint {str(path)!r} has no EMA state but this run keeps "
                    "one (ema / validate_using_ema); resume with the same settings"
                )
            self.ema.load_state(state["ema"])
        trainer_state = state["trainer"]
        self.epoch = int(trainer_state["epoch"])
        self.best_value = float(trainer_state["best_value"])
        # checkpoints written before best_inference_ckpt.tar existed have none
        self.best_inference_value = float(
            trainer_state.get("best_inference_value", float("inf"))
        )
        self._resume_sampler_state = dict(trainer_state["sampler"])
        self._epoch_metrics = MeanAggregator()
        self._epoch_metrics.load_state(trainer_state["epoch_metrics"])
        set_rng_state(trainer_state["rng"])
        self._repair_best_checkpoint(path, state)
        self._last_checkpoint = (path, self.optimization.optimizer_steps)
        logging.info(
            "resumed from %s at epoch %d, optimizer step %d",
            path,
            self.epoch,
            self.optimization.optimizer_steps,
        )
