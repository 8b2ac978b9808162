"""Atomic checkpoint files of plain data, with a format version and migrations.

Format history:

- 0: checkpoints without a ``format_version`` key, written before the
  corrector loss, loss-weight schedules and exact resume existed (see
  ``_migrate_0_to_1`` for the layout).
- 1: ``{"format_version": 1, "config", "trainable", "optimization",
  "trainer"[, "phase"]}`` as written by ``fme.core.trainer.Trainer``.
"""

import os
import pickle
import tempfile
import zipfile
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


_TMP_SUFFIX = ".tmp"


def _temporary_prefix(name: str) -> str:
    return f".{name}."


def remove_stale_temporary_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed.

    ``save_checkpoint`` writes ``.<name>.<random>.tmp`` next to the target and
    renames it; a process killed before the rename leaves it behind. Only
    files of that shape that end in ``.tar.<random>.tmp`` are removed.

    Returns:
        The removed paths (empty if ``directory`` does not exist).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in sorted(directory.glob(f".*.tar.*{_TMP_SUFFIX}")):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    A crash while writing never leaves a half-written file where a good
    checkpoint was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, "format_version": CHECKPOINT_FORMAT_VERSION}
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=_temporary_prefix(path.name), suffix=_TMP_SUFFIX
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
        ValueError: the file is missing, empty, truncated or corrupt, not a
            checkpoint, or from a newer, unknown format; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"checkpoint {str(path)!r} is empty (0 bytes); it was not written "
            "completely: use another checkpoint or retrain"
        )
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise _corrupt(path, size, ValueError("not a complete zip archive"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise ValueError(
                f"checkpoint {str(path)!r} holds objects other than plain data "
                "and tensors, which are never unpickled here "
                f"({str(err).splitlines()[0]})"
            ) from None
        raise _corrupt(path, size, err) from None
    except (OSError, EOFError, RuntimeError, ValueError) as err:
        raise _corrupt(path, size, err) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {str(path)!r} is not a checkpoint: it holds a "
            f"{type(state).__name__}, not a mapping of states"
        )
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


def _corrupt(path: Path, size: int, err: BaseException) -> ValueError:
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(
        f"checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt and "
        f"cannot be read ({type(err).__name__}: {first_line}); use another "
        "checkpoint or retrain"
    )
