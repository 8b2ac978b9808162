"""Resolve ``best_checkpoint_metric`` against the metrics a run really logs.

A typo in the metric name used to train to the end without ever writing
``best_ckpt.tar``. The names are found the way they are produced: the
validation metrics by validating one sample (random states restored, so the
run is unchanged), the inline-inference metrics from an empty aggregator.
"""

import logging

import torch

from fme.ace.data.loader import GriddedData, collate_windows
from fme.ace.inference.inline import InlineInference
from fme.ace.stepper.train_stepper import NonFiniteLossError, TrainStepper
from fme.core.distributed import DistributedContext

VALIDATION_PREFIX = "val/mean/"


def validation_metric_names(
    train_stepper: TrainStepper, data: GriddedData, *, dist: DistributedContext
) -> list[str] | None:
    """``val/mean/...`` names validation logs, from one validated sample.

    None when the sample's loss is not finite: the names cannot be found that
    way, and training reports the non-finite loss itself where it occurs.
    """
    batch = collate_windows([data.loader.dataset[0]]).to(dist.device)
    devices = [dist.device] if dist.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            out = train_stepper.validate_on_batch(batch)
        except NonFiniteLossError:
            return None
    return sorted(VALIDATION_PREFIX + k for k in out.metrics)


def check_best_metric(
    metric: str,
    *,
    train_stepper: TrainStepper,
    validation: GriddedData | None,
    inference: InlineInference | None,
    dist: DistributedContext,
    label: str = "",
) -> None:
    """Raise unless ``metric`` is among the metrics the run logs every epoch.

    Args:
        metric: ``best_checkpoint_metric``.
        train_stepper: the phase's train stepper (produces validation metrics).
        validation: validation data, or None (then no ``val/`` metric exists).
        inference: inline inference, or None.
        dist: the distributed context (every rank validates the sample).
        label: the phase, for messages (empty for a single phase).

    Raises:
        ValueError: naming the metric and every allowed name.
    """
    where = f" ({label})" if label else ""
    if metric.startswith(VALIDATION_PREFIX.split("/")[0] + "/"):
        if validation is None:
            logging.warning(
                "best_checkpoint_metric %r is a validation metric but the config "
                "has no validation section: best_ckpt.tar will not be written",
                metric,
            )
            return
        names = validation_metric_names(train_stepper, validation, dist=dist)
        if names is None:
            return
        allowed = names
    else:
        allowed = sorted(inference.metric_names()) if inference is not None else []
        if inference is not None and inference.may_log_diagnostic(metric):
            return
    if metric not in allowed:
        raise ValueError(
            f"best_checkpoint_metric {metric!r} is never logged{where}, so "
            f"best_ckpt.tar would never be written; allowed: {allowed}"
        )
