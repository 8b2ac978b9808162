"""Atomic checkpoint files of plain data, with a format version and migrations.

Format history:

- 0: checkpoints without a ``format_version`` key, written before the
  corrector loss, loss-weight schedules and exact resume existed (see
  ``_migrate_0_to_1`` for the layout).
- 1: ``{"format_version": 1, "config", "trainable", "optimization",
  "trainer"[, "phase"]}`` as written by ``fme.core.trainer.Trainer``.
- 2: as 1; the ``SphericalFourierNeuralOperatorNet`` weights have ACE's names
  and shapes (see ``_migrate_1_to_2``).

Checkpoints of other programs (ACE's) are read through a registered
:class:`ForeignCheckpointFormat`, which names the few classes their pickles
may hold (loaded as plain stand-ins, never as code) and converts them into
the current format.
"""

import dataclasses
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT_VERSION = 2

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


def _sfno_weights_1_to_2(
    module: dict[str, torch.Tensor], *, builder: dict[str, Any], img_shape: tuple
) -> dict[str, torch.Tensor]:
    """Format-1 SFNO weight names and shapes to ACE's (format 2)."""
    n_lat, n_lon = img_shape
    factor = int(builder.get("scale_factor", 1))
    fraction = float(builder.get("hard_thresholding_fraction", 1.0))
    ace_mmax = int((n_lon // factor // 2 + 1) * fraction)
    out: dict[str, torch.Tensor] = {}
    for name, value in module.items():
        parts = name.split(".")
        if parts[0] in ("encoder", "decoder") or parts[-2:-1] == ["inner_skip"]:
            if parts[-1] == "weight":
                value = value[:, :, None, None]
        elif len(parts) == 4 and parts[2] == "spectral_conv":
            prefix = ".".join(parts[:2])
            if value.dim() == 4:  # dhconv [l, in, out, 2] -> (in, out, l, 2)
                value = value.permute(1, 2, 0, 3)
            else:  # diagonal [l, m, in, out, 2] -> (in, out, l, m_ace, 2)
                n_l, n_m, n_in, n_out, _ = value.shape
                padded = value.new_zeros(n_l, ace_mmax, n_in, n_out, 2)
                padded[:, :n_m] = value
                value = padded.permute(2, 3, 0, 1, 4)
            out[f"{prefix}.filter.filter.weight"] = value.contiguous()
            out[f"{prefix}.filter.filter.bias"] = value.new_zeros(
                1, value.shape[1], 1, 1
            )
            continue
        elif len(parts) == 5 and parts[2] == "mlp":
            name = ".".join([*parts[:3], "fwd", *parts[3:]])
            if parts[-1] == "weight":
                value = value[:, :, None, None]
        out[name] = value
    return out


def _migrate_1_to_2(state: dict[str, Any]) -> dict[str, Any]:
    """Format 1 to format 2: SFNO weights in ACE's layout.

    Format 1's ``SphericalFourierNeuralOperatorNet`` stored ``blocks.<i>.
    spectral_conv.weight`` as ``[lmax, in, out, 2]`` (dhconv) or ``[lmax,
    min(lmax, mmax), in, out, 2]`` (diagonal), pointwise weights as ``[out,
    in]`` and ``blocks.<i>.mlp.<k>``; its builder config had ``grid`` (default
    equiangular), ``operator_type`` defaulting to dhconv, and kept the blocks on
    the data grid with ``scale_factor: 1``. Format 2 has ACE's names and shapes
    (``blocks.<i>.filter.filter.{weight,bias}`` with a zero bias, ``[out, in,
    1, 1]``, ``blocks.<i>.mlp.fwd.<k>``, diagonal weights zero-padded to ACE's
    ``mmax``) and the config keys ``data_grid`` and ``internal_grid: data``
    (same function). The optimiser state refers to the old shapes, so the
    migrated checkpoint has no ``optimization`` section: evaluate or fine-tune
    it, do not resume it.
    """
    stepper = state.get("trainable", {}).get("stepper")
    if stepper is None:
        return state
    step = stepper["config"].get("step", {})
    builder = step.get("config", {}).get("builder", {})
    if builder.get("type") != "SphericalFourierNeuralOperatorNet":
        return state
    config = dict(builder.get("config", {}))
    if "grid" not in config and "data_grid" in config:
        return state  # already in the new layout
    config["data_grid"] = config.pop("grid", "equiangular")
    config.setdefault("operator_type", "dhconv")
    if int(config.get("scale_factor", 1)) == 1:
        config["internal_grid"] = "data"
    info = stepper["dataset_info"]
    module = _sfno_weights_1_to_2(
        stepper["module"],
        builder=config,
        img_shape=(len(info["lat"]), len(info["lon"])),
    )
    new_builder = {**builder, "config": config}
    new_step = {**step, "config": {**step["config"], "builder": new_builder}}
    new_stepper = {
        **stepper,
        "config": {**stepper["config"], "step": new_step},
        "module": module,
    }
    state = {**state, "trainable": {**state["trainable"], "stepper": new_stepper}}
    state.pop("optimization", None)
    return state


# Migrations from format version N to N+1, applied in order on load.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _migrate_0_to_1,
    1: _migrate_1_to_2,
}


@dataclasses.dataclass(frozen=True)
class ForeignCheckpointFormat:
    """How to recognise and convert another program's checkpoints.

    Attributes:
        name: shown in messages, e.g. ``"ACE (fme==2026.10.0)"``.
        stand_ins: ``(class, "module.QualifiedName")`` pairs: the only
            classes the pickle may hold besides torch's plain types, each
            loaded as the given plain-data class (no code of the writer runs).
        matches: whether a loaded object is such a checkpoint.
        convert: turns it into a checkpoint of the current format.
    """

    name: str
    stand_ins: tuple[tuple[type, str], ...]
    matches: Callable[[Any], bool]
    convert: Callable[[dict[str, Any]], dict[str, Any]]


_FOREIGN_FORMATS: list[ForeignCheckpointFormat] = []


def register_foreign_format(checkpoint_format: ForeignCheckpointFormat) -> None:
    """Let ``load_checkpoint`` read (and convert) another program's checkpoints."""
    if all(f.name != checkpoint_format.name for f in _FOREIGN_FORMATS):
        _FOREIGN_FORMATS.append(checkpoint_format)


def _is_ours(state: Any) -> bool:
    if not isinstance(state, dict):
        return False
    if "format_version" in state:
        return True
    stepper = state.get("stepper")  # format 0
    return isinstance(stepper, dict) and "module" in stepper


def _describe(state: Any) -> str:
    if isinstance(state, dict):
        return f"a dict with keys {sorted(map(str, state))[:12]}"
    return f"a {type(state).__name__}"


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
    stand_ins: list[Any] = [pair for f in _FOREIGN_FORMATS for pair in f.stand_ins]
    try:
        with torch.serialization.safe_globals(stand_ins):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise ValueError(
                f"checkpoint {str(path)!r} is neither an fme checkpoint nor one "
                f"of {_foreign_names()}: it holds objects other than plain data "
                "and tensors, which are never unpickled here (weights-only "
                f"loading: {str(err).splitlines()[0]})"
            ) from None
        raise _corrupt(path, size, err) from None
    except (OSError, EOFError, RuntimeError, ValueError) as err:
        raise _corrupt(path, size, err) from None
    if not _is_ours(state):
        for foreign in _FOREIGN_FORMATS:
            if foreign.matches(state):
                state = foreign.convert(state)
                break
        else:
            raise ValueError(
                f"checkpoint {str(path)!r} is not a checkpoint this program "
                f"reads: neither an fme checkpoint nor one of {_foreign_names()}; "
                f"found {_describe(state)}"
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


def _foreign_names() -> list[str]:
    return [f.name for f in _FOREIGN_FORMATS]


def _corrupt(path: Path, size: int, err: BaseException) -> ValueError:
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(
        f"checkpoint {str(path)!r} ({size} bytes) is neither an fme checkpoint "
        f"nor one of {_foreign_names()}: it is truncated or corrupt and torch "
        f"cannot read it with weights-only loading ({type(err).__name__}: "
        f"{first_line}); use another checkpoint or retrain"
    )
