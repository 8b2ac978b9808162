"""Initialise a stepper's network from a training checkpoint (fine-tuning).

Reads ``trainable.stepper`` of a checkpoint (older formats are migrated by
``load_checkpoint``), loads its network weights strictly (see
``fme.core.parameter_init.load_parameters``), and reports how the
checkpoint's normalisation and stepper config differ from the new run's:
fine-tuning on another dataset usually changes the statistics on purpose,
but a surprise there is worth a line in the log.
"""

import logging
from typing import Any

from fme.ace.stepper.stepper import Stepper
from fme.core.checkpoint import load_checkpoint
from fme.core.parameter_init import (
    ParameterInitConfig,
    describe_differences,
    load_parameters,
)


def checkpoint_stepper_state(path: str) -> dict[str, Any]:
    """The stepper state (config, weights, normalisation) stored at ``path``.

    Raises:
        ValueError: if the file is missing or holds no stepper.
    """
    state = load_checkpoint(path)
    try:
        return state["trainable"]["stepper"]
    except (KeyError, TypeError):
        raise ValueError(
            f"checkpoint {path!r} holds no trainable.stepper; give a training "
            "checkpoint (ckpt.tar, best_ckpt.tar or a phase checkpoint)"
        ) from None


def initialize_stepper(stepper: Stepper, config: ParameterInitConfig) -> list[str]:
    """Load the weights of ``config.weights_path`` into ``stepper``'s network.

    Call before freezing, LoRA and data-parallel wrapping. Does nothing
    without ``weights_path``.

    Returns:
        The names of the loaded tensors.

    Raises:
        ValueError: if the checkpoint's weights do not match the network
            (listing every mismatched name and shape).
    """
    if config.weights_path is None:
        return []
    source = checkpoint_stepper_state(config.weights_path)
    loaded = load_parameters(
        stepper.base_module,
        source["module"],
        exclude_parameters=config.exclude_parameters,
        source_name=repr(config.weights_path),
    )
    current = stepper.get_state()
    for key, label, level in (
        ("normalizer", "network normalisation", logging.WARNING),
        ("loss_normalizer", "loss normalisation", logging.WARNING),
        ("config", "stepper config", logging.INFO),
    ):
        if key not in source:
            continue
        differences = describe_differences(source[key], current[key])
        if differences:
            logging.log(
                level,
                "the %s differs from the checkpoint's (checkpoint -> this run):\n  %s",
                label,
                "\n  ".join(differences),
            )
    return loaded
