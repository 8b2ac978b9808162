"""Initialising a network from pre-trained weights: ACE's ``parameter_init``.

Loading is strict: every parameter and buffer of the network must be in the
source with the same shape, and the source must hold nothing else, except for
names matched by ``exclude_parameters``, which keep their fresh
initialisation (e.g. a new output layer). Any other difference is one error
listing every mismatched name and shape, with the fix.
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fme.core.freezing import FrozenParameterConfig
from fme.core.wildcard import check_all_patterns_match, matches_any

_FIELD = "stepper_training.parameter_init"
_DDP_PREFIX = "module."


@dataclasses.dataclass
class ParameterInitConfig:
    """Start training from the weights of a training checkpoint.

    Attributes:
        weights_path: a training checkpoint (``ckpt.tar``, ``best_ckpt.tar``
            or a phase checkpoint) whose network weights initialise this run;
            None starts from random weights. Applied when a run starts, not
            when it resumes from its own checkpoint.
        exclude_parameters: patterns of parameter (and buffer) names that are
            not loaded and keep their fresh initialisation, e.g.
            ``["decoder.*"]``; see ``fme.core.wildcard``. Needs weights_path.
        frozen_parameters: parameters not trained (with or without
            weights_path); see ``FrozenParameterConfig``.
    """

    weights_path: str | None = None
    exclude_parameters: list[str] = dataclasses.field(default_factory=list)
    frozen_parameters: FrozenParameterConfig = dataclasses.field(
        default_factory=FrozenParameterConfig
    )

    def __post_init__(self):
        if self.exclude_parameters and self.weights_path is None:
            raise ValueError(
                f"{_FIELD}.exclude_parameters needs {_FIELD}.weights_path; set "
                "weights_path or remove exclude_parameters"
            )


def strip_data_parallel_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with DDP's ``module.`` prefix removed if every key has it."""
    if state and all(k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return dict(state)


def load_parameters(
    module: nn.Module,
    source: Mapping[str, torch.Tensor],
    *,
    exclude_parameters: list[str],
    source_name: str = "the checkpoint",
) -> list[str]:
    """Copy ``source`` into ``module`` strictly, skipping excluded names.

    Args:
        module: the freshly initialised network (not wrapped for DDP).
        source: a state dict of the pre-trained network.
        exclude_parameters: patterns of names that keep their initialisation.
        source_name: how to name the source in messages (e.g. its path).

    Returns:
        The names that were loaded.

    Raises:
        ValueError: if an exclude pattern matches no name, or if names are
            missing, unexpected or of another shape, listing all of them.
    """
    source = strip_data_parallel_prefix(source)
    target = module.state_dict()
    check_all_patterns_match(
        exclude_parameters,
        sorted(set(target) | set(source)),
        field=f"{_FIELD}.exclude_parameters",
    )

    def kept(name: str) -> bool:
        return not matches_any(name, exclude_parameters)

    missing = [n for n in target if kept(n) and n not in source]
    unexpected = [n for n in source if kept(n) and n not in target]
    wrong_shape = [
        f"{n} (checkpoint {tuple(source[n].shape)}, model {tuple(target[n].shape)})"
        for n in target
        if kept(n) and n in source and source[n].shape != target[n].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"missing from the checkpoint: {missing}")
        if unexpected:
            problems.append(f"not in the model: {unexpected}")
        if wrong_shape:
            problems.append(f"different shapes: {wrong_shape}")
        raise ValueError(
            f"{_FIELD}: the weights in {source_name} do not match the model; "
            + "; ".join(problems)
            + f". Add these names (or patterns such as 'decoder.*') to "
            f"{_FIELD}.exclude_parameters to keep their fresh initialisation, "
            "or configure the model like the checkpoint's"
        )
    loaded = [n for n in target if kept(n)]
    merged = {**target, **{n: source[n] for n in loaded}}
    module.load_state_dict(merged, strict=True)
    excluded = [n for n in target if not kept(n)]
    logging.info(
        "initialised %d tensors from %s%s",
        len(loaded),
        source_name,
        f"; kept the fresh initialisation of {excluded}" if excluded else "",
    )
    return loaded


def describe_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, max_items: int = 20
) -> list[str]:
    """Human-readable differences between two nested plain-data mappings.

    Nested mappings are compared key by key and reported with dotted paths,
    e.g. ``step.config.builder.config.embed_dim: 32 -> 64``.

    Args:
        old: e.g. the checkpoint's config or normalisation statistics.
        new: the same for the current run.
        max_items: report at most this many differences (then "... and N more").
    """
    lines: list[str] = []
    _diff(old, new, prefix="", lines=lines)
    if len(lines) > max_items:
        lines = lines[:max_items] + [f"... and {len(lines) - max_items} more"]
    return lines


def _diff(old: Any, new: Any, *, prefix: str, lines: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                lines.append(f"{path}: {old[key]!r} -> (absent)")
            elif key not in old:
                lines.append(f"{path}: (absent) -> {new[key]!r}")
            else:
                _diff(old[key], new[key], prefix=path, lines=lines)
        return
    if not _equal(old, new):
        lines.append(f"{prefix or '(value)'}: {old!r} -> {new!r}")


def _equal(old: Any, new: Any) -> bool:
    if isinstance(old, torch.Tensor) or isinstance(new, torch.Tensor):
        return (
            isinstance(old, torch.Tensor)
            and isinstance(new, torch.Tensor)
            and old.shape == new.shape
            and bool(torch.equal(old, new))
        )
    return bool(old == new)
