"""Atomic checkpoint files of plain data, with a format version and migrations.

Format history:

- 0: checkpoints without a ``format_version`` key, written before the
  corrector loss, loss-weight schedules and exact resume existed (see
  ``_migrate_0_to_1`` for the layout).
- 1: ``{"format_version": 1, "config", "trainable", "optimization",
  "trainer"[, "phase"]}`` as written by ``fme.core.trainer.Trainer``.
"""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT_VERSION = 1

_DDP_PREFIX = "module."


def _migrate_0_to_1(state: dict[str, Any]) -> dict[str, Any]:
    """Format 0 to format 1.

    Format 0 (no ``format_version`` key) held::

        {
            "config": {...},             # the run config (optional)
            "stepper": {
                "config": {...},         # the stepper config, as in format 1
                "module": {name: tensor},  # keys may carry DDP's "module." prefix
                "normalizer": {"means": {...}, "stds": {...}},
                # no "loss_normalizer": losses used the network normaliser
                "dataset_info": {...},   # as in format 1
            },
            "optimizer": {...},          # torch optimiser state (no clock)
            "epoch": int,                # completed epochs
            "best_validation_loss": float,
        }

    Format 1 nests the stepper under ``trainable`` next to the loss-weight
    schedule state, and the loop state under ``trainer``. A format-0
    checkpoint had no optimiser-step clock, schedule or RNG state, so the
    migrated checkpoint has no ``optimization`` section: it can be used for
    inference and as ``parameter_init.weights_path``, but not resumed.
    """
    stepper = dict(state["stepper"])
    module = dict(stepper["module"])
    if module and all(k.startswith(_DDP_PREFIX) for k in module):
        module = {k[len(_DDP_PREFIX) :]: v for k, v in module.items()}
    stepper["module"] = module
    stepper.setdefault("loss_normalizer", stepper["normalizer"])
    return {
        "config": state.get("config", {}),
        "trainable": {
            "stepper": stepper,
            "loss_weights": {"t": 0, "terms": {}},
        },
        "trainer": {
            "epoch": int(state.get("epoch", 0)),
            "best_value": float(state.get("best_validation_loss", float("inf"))),
        },
        "migrated_from_format": 0,
    }


# Migrations from format version N to N+1, applied in order on load.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _migrate_0_to_1,
}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    A crash while writing never leaves a half-written file where a good
    checkpoint was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "format_version": CHECKPOINT_FORMAT_VERSION}
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint, migrating older formats to the current one.

    Raises:
        ValueError: the file is missing or from a newer, unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    version = int(state.get("format_version", 0))
    if version > CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has format version {version}, newer than this "
            f"fme understands ({CHECKPOINT_FORMAT_VERSION}); upgrade fme"
        )
    while version < CHECKPOINT_FORMAT_VERSION:
        if version not in _MIGRATIONS:
            raise ValueError(
                f"checkpoint {str(path)!r} has format version {version}, which "
                "cannot be migrated"
            )
        state = _MIGRATIONS[version](state)
        version += 1
        state["format_version"] = version
    return state
