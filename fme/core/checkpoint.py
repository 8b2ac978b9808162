"""Atomic checkpoint files of plain data, with a format version and migrations."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT_VERSION = 1

# Migrations from format version N to N+1, applied in order on load.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


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
