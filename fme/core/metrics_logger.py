"""Where metrics go: the screen, ``metrics.jsonl`` and wandb (rank 0 only)."""

import dataclasses
import json
import logging
import math
import secrets
import sys
from pathlib import Path
from typing import Any

import torch

from fme.core.distributed import DistributedContext

WANDB_RUN_ID_FILE = "wandb_run_id"


@dataclasses.dataclass
class LoggingConfig:
    """ACE's ``logging`` section.

    Attributes:
        log_to_screen: print log messages and epoch summaries to the terminal.
        log_to_file: also write log messages to ``experiment_dir/out.log``.
        log_to_wandb: send metrics to wandb (``WANDB_MODE=offline`` works
            without an account).
        project: wandb project.
        entity: wandb entity (team or user); None uses the default.
        level: Python logging level name.
        progress_log_interval: when stdout is not a terminal, print a progress
            line (step, loss, samples/s, ETA) every this many batches; on a
            terminal a progress bar shows the same.
        batch_log_interval: log ``batch_``-prefixed metrics every this many
            optimiser steps.
    """

    log_to_screen: bool = True
    log_to_file: bool = True
    log_to_wandb: bool = False
    project: str = "fme"
    entity: str | None = None
    level: str = "INFO"
    batch_log_interval: int = 10
    progress_log_interval: int = 50

    def __post_init__(self):
        if self.level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(
                f"logging.level {self.level!r} is unknown; allowed: "
                "DEBUG, INFO, WARNING, ERROR"
            )
        if self.progress_log_interval < 1:
            raise ValueError(
                "logging.progress_log_interval must be >= 1, got "
                f"{self.progress_log_interval}"
            )
        if self.batch_log_interval < 1:
            raise ValueError(
                f"logging.batch_log_interval must be >= 1, got {self.batch_log_interval}"
            )

    def configure_python_logging(
        self, experiment_dir: Path, dist: DistributedContext
    ) -> None:
        """Set up the root logger: screen and file on rank 0, warnings elsewhere."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        handlers: list[logging.Handler] = []
        if not dist.is_root:
            root.setLevel(logging.WARNING)
            rank_handler = logging.StreamHandler(sys.stderr)
            rank_handler.setFormatter(
                logging.Formatter(f"[rank {dist.rank}] %(message)s")
            )
            root.addHandler(rank_handler)
            return
        root.setLevel(self.level)
        if self.log_to_file:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(experiment_dir / "out.log")
            file_handler.setFormatter(formatter)
            handlers.append(file_handler)
        if self.log_to_screen:
            screen = logging.StreamHandler(sys.stdout)
            # with a log file, tracebacks go there and the screen keeps one line
            screen.setFormatter(
                _WithoutTraceback(formatter._fmt) if self.log_to_file else formatter
            )
            handlers.append(screen)
        for handler in handlers:
            root.addHandler(handler)


class _WithoutTraceback(logging.Formatter):
    """Formats a record without its exception traceback."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text = saved


def _plain(value: Any) -> float | int | str:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric tensors must be scalars, got shape {value.shape}")
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricsLogger:
    """Writes metric records to ``metrics.jsonl`` and wandb on rank 0.

    Every record carries ``optimizer_step`` and ``epoch``; values are plain
    numbers (tensors are converted, never silently dropped).

    Args:
        config: the logging config.
        experiment_dir: where ``metrics.jsonl`` and the wandb run id live.
        dist: only rank 0 writes.
        run_config: the whole run config, logged to wandb.
    """

    def __init__(
        self,
        *,
        config: LoggingConfig,
        experiment_dir: Path,
        dist: DistributedContext,
        run_config: dict[str, Any] | None = None,
    ):
        self.config = config
        self.experiment_dir = Path(experiment_dir)
        self.enabled = dist.is_root
        self.path = self.experiment_dir / "metrics.jsonl"
        self._wandb: Any = None
        if self.enabled and config.log_to_wandb:
            self._wandb = self._start_wandb(run_config or {})

    def _start_wandb(self, run_config: dict[str, Any]) -> Any:
        import wandb  # heavy: imported only when wandb logging is on

        id_file = self.experiment_dir / WANDB_RUN_ID_FILE
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id)
        run = wandb.init(
            project=self.config.project,
            entity=self.config.entity,
            id=run_id,
            resume="allow",
            dir=str(self.experiment_dir),
            config=run_config,
        )
        run.define_metric("optimizer_step")
        run.define_metric("*", step_metric="optimizer_step")
        return run

    def log(self, metrics: dict[str, Any], *, optimizer_step: int, epoch: int) -> None:
        """Append one record (rank 0 only)."""
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in metrics.items()}
        record["optimizer_step"] = optimizer_step
        record["epoch"] = epoch
        self.experiment_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(record)

    def log_images(self, images: dict[str, Path], *, optimizer_step: int) -> None:
        """Send PNG files to wandb as images (no-op without wandb)."""
        if not self.enabled or self._wandb is None:
            return
        import wandb

        self._wandb.log(
            {
                **{k: wandb.Image(str(p)) for k, p in images.items()},
                "optimizer_step": optimizer_step,
            }
        )

    def finish(self) -> None:
        """Close the wandb run."""
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
