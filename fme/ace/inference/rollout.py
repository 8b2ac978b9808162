"""A memory-bounded inference rollout: chunks of lead times scored and written."""

import torch

from fme.ace.data.batch import BatchData
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.evaluation.writer import PredictionWriter
from fme.ace.step.step import StepOutput
from fme.ace.stepper.stepper import Stepper
from fme.core.tensors import TensorDict


def _stack(outputs: list[StepOutput], names: list[str]) -> TensorDict:
    return {n: torch.stack([o.output[n] for o in outputs], dim=1) for n in names}


def _stack_corrections(outputs: list[StepOutput]) -> TensorDict:
    """Corrections per variable over the chunk; zero where a step left it alone."""
    names = list(dict.fromkeys(n for o in outputs for n in o.uncorrected))
    return {
        n: torch.stack(
            [
                o.output[n] - o.uncorrected[n]
                if n in o.uncorrected
                else torch.zeros_like(o.output[n])
                for o in outputs
            ],
            dim=1,
        )
        for n in names
    }


@torch.no_grad()
def run_rollout(
    *,
    stepper: Stepper,
    batch: BatchData,
    n_forward_steps: int,
    forward_steps_in_memory: int,
    aggregator: RolloutMetricsAggregator,
    writer: PredictionWriter | None = None,
    sample_start: int = 0,
) -> TensorDict:
    """Roll ``batch``'s initial conditions forward, scoring chunk by chunk.

    Only ``forward_steps_in_memory`` predicted steps are held at a time: each
    chunk is recorded in ``aggregator`` (and written by ``writer``) and then
    dropped.

    Args:
        stepper: the model.
        batch: windows of ``n_forward_steps + 1`` times (time 0 is the initial
            condition).
        n_forward_steps: rollout length.
        forward_steps_in_memory: chunk length.
        aggregator: accumulates skill and conservation metrics.
        writer: writes predictions and targets, if given.
        sample_start: index of the batch's first sample in the writer's files.

    Returns:
        The prediction at the last lead, ``{name: [batch, lat, lon]}``.
    """
    if forward_steps_in_memory < 1:
        raise ValueError(
            f"forward_steps_in_memory must be >= 1, got {forward_steps_in_memory}"
        )
    data = batch.data
    names = stepper.out_names
    initial_all = {n: data[n][:, 0] for n in names if n in data}
    rollout = stepper.rollout(
        initial_condition={n: data[n][:, 0] for n in stepper.prognostic_names},
        forcing={n: data[n] for n in stepper.forcing_names},
        n_forward_steps=n_forward_steps,
        detach_uncorrected=True,
    )
    if writer is not None:
        writer.set_init_times(sample_start, batch.time[:, 0])
    chunk: list[StepOutput] = []
    final: TensorDict = {}
    lead_start = 1
    for i, out in enumerate(rollout):
        chunk.append(out)
        if len(chunk) < forward_steps_in_memory and i < n_forward_steps - 1:
            continue
        prediction = _stack(chunk, names)
        target = {n: data[n][:, lead_start : lead_start + len(chunk)] for n in names}
        aggregator.record(
            lead_start=lead_start,
            prediction=prediction,
            target=target,
            initial_condition=initial_all,
            corrections=(
                _stack_corrections(chunk) if any(o.uncorrected for o in chunk) else None
            ),
        )
        if writer is not None:
            writer.append(
                sample_start=sample_start,
                lead_start=lead_start,
                prediction=prediction,
                target=target,
            )
        lead_start += len(chunk)
        final = {n: prediction[n][:, -1] for n in names}
        chunk = []
    return final
