"""On resume, compare the run's config with the checkpoint's and say what changes.

A setting that takes effect when a run resumes (run length, logging,
checkpointing, validation, inline inference, data location and workers,
distributed settings) may change: the change is applied and logged, old →
new. Anything else (the model, its variables and normalisation statistics,
losses, rollout, optimiser and schedule, batch size, seed, phases, the best
metric) is restored from the checkpoint and cannot change silently: the
start is refused, listing each differing dotted key, old → new. The initial
weights (``parameter_init.weights_path``, ``exclude_parameters``) are used
only when a run starts; a change to them is logged as having no effect.
"""

import fnmatch
import logging
import math
from typing import Any

from fme.ace.stepper.stepper import Stepper
from fme.ace.train.config import TrainConfig
from fme.core.config_loading import ConfigError, from_dict_strict, to_dict

# dotted keys (shell wildcards) whose change on resume is applied for real
APPLIED_ON_RESUME = (
    "experiment_dir",
    "max_epochs",
    "max_steps",
    "checkpoint_every_n_steps",
    "save_checkpoint",
    "logging",
    "logging.*",
    "validation",
    "validation.*",
    "inference",
    "inference.*",
    "train_loader.num_data_workers",
    "train_loader.prefetch_factor",
    "train_loader.dataset.data_path",
    "train_loader.dataset.cache_in_memory",
    "distributed_backend",
    "distributed_timeout_seconds",
    # where the statistics are read from; their values are compared below
    "stepper.step.config.normalization.*.global_means_path",
    "stepper.step.config.normalization.*.global_stds_path",
)

# used only when a run starts: a resumed run takes its weights from ckpt.tar
START_ONLY = (
    "stepper_training.parameter_init.weights_path",
    "stepper_training.parameter_init.exclude_parameters",
)

_STATISTICS_RTOL = 1e-6


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple]:
    """``{dotted key: (old, new)}`` for every leaf that differs."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    missing = "<absent>"
    return {
        key: (flat_old.get(key, missing), flat_new.get(key, missing))
        for key in sorted(set(flat_old) | set(flat_new))
        if flat_old.get(key, missing) != flat_new.get(key, missing)
    }


def _applies_on_resume(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in APPLIED_ON_RESUME)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """The saved config with this version's defaults filled in (if it loads)."""
    try:
        return to_dict(from_dict_strict(TrainConfig, saved, path="checkpoint config"))
    except (ConfigError, ValueError):
        return saved


def _statistics_differences(
    saved: dict[str, Any], stepper: Stepper
) -> dict[str, tuple[float, float]]:
    """Normalisation statistics of the checkpoint that differ from this run's."""
    current = stepper.get_state()
    out: dict[str, tuple[float, float]] = {}
    for which in ("normalizer", "loss_normalizer"):
        old_flat = _flatten(saved.get(which, {}))
        new_flat = _flatten(current[which])
        for key in sorted(set(old_flat) | set(new_flat)):
            a, b = old_flat.get(key), new_flat.get(key)
            if a is None or b is None:
                out[f"{which}.{key}"] = (a, b)  # type: ignore[assignment]
            elif not math.isclose(float(a), float(b), rel_tol=_STATISTICS_RTOL):
                out[f"{which}.{key}"] = (float(a), float(b))
    return out


def check_resume(
    config: TrainConfig, checkpoint: dict[str, Any], *, stepper: Stepper, path: str
) -> dict[str, tuple]:
    """Refuse differences that cannot apply; log and return those that do.

    Args:
        config: the run's config.
        checkpoint: the loaded ``ckpt.tar`` the run resumes from.
        stepper: the network built from ``config`` (its statistics are the
            ones read now).
        path: the checkpoint's path, for messages.

    Returns:
        The applied differences, ``{dotted key: (old, new)}``.

    Raises:
        ValueError: listing every refused difference, old → new, and the fix.
    """
    saved = checkpoint.get("config") or {}
    refused: dict[str, tuple] = {}
    applied: dict[str, tuple] = {}
    start_only: dict[str, tuple] = {}
    if not saved:
        logging.warning(
            "%s stores no run config; the config cannot be compared on resume", path
        )
    else:
        for key, change in config_differences(
            _with_defaults(saved), to_dict(config)
        ).items():
            if key in START_ONLY:
                start_only[key] = change
            elif _applies_on_resume(key):
                applied[key] = change
            else:
                refused[key] = change
    stepper_state = checkpoint.get("trainable", {}).get("stepper", {})
    for key, change in _statistics_differences(stepper_state, stepper).items():
        refused[f"normalization statistics {key}"] = change
    if refused:
        lines = "; ".join(
            f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items()
        )
        raise ValueError(
            f"cannot resume from {path}: these settings differ from the checkpoint "
            f"and cannot change when a run resumes: {lines}. Restore them, or "
            "start a new experiment_dir that fine-tunes from this checkpoint "
            "(stepper_training.parameter_init.weights_path), or add a phase"
        )
    for key, (old, new) in applied.items():
        logging.info("resuming with a changed setting: %s: %r -> %r", key, old, new)
    for key, (old, new) in start_only.items():
        logging.warning(
            "%s changed (%r -> %r) but is used only when a run starts; resuming "
            "takes the weights from %s",
            key,
            old,
            new,
            path,
        )
    return applied
