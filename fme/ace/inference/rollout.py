"""A memory-bounded inference rollout: chunks of lead times read, predicted, handed on.

Each chunk of ``forward_steps_in_memory`` steps reads its data window (the
time before the chunk, for the forcing of its first step, and the chunk's
times), rolls the model on from the previous chunk's last state and hands
the chunk to a callback (metrics, writers), then drops it. Memory therefore
does not grow with the rollout length.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from fme.ace.corrector.corrector import CorrectorState
from fme.ace.inference.data import InferenceData
from fme.ace.step.step import StepOutput
from fme.ace.stepper.stepper import Stepper
from fme.core.tensors import TensorDict


@dataclasses.dataclass
class RolloutChunk:
    """One chunk of a rollout.

    Attributes:
        lead_start: lead (steps after the initial condition, >= 1) of the
            chunk's first time.
        prediction: ``{out_name: [batch, n_leads, lat, lon]}`` corrected output.
        data: ``{name: [batch, n_leads, lat, lon]}`` the data at the chunk's
            times (targets for the evaluator; forcing only in inference).
        initial_condition: ``{name: [batch, lat, lon]}`` data at lead 0.
        corrections: ``{name: [batch, n_leads, lat, lon]}`` of
            ``output - uncorrected``, or None when no corrector changed anything.
        time: ``[batch, n_leads]`` ``datetime64[ns]`` valid times.
    """

    lead_start: int
    prediction: TensorDict
    data: TensorDict
    initial_condition: TensorDict
    corrections: TensorDict | None
    time: np.ndarray

    @property
    def n_leads(self) -> int:
        """Lead times in the chunk."""
        return next(iter(self.prediction.values())).shape[1]

    def has_target(self, names: list[str]) -> bool:
        """Whether the data hold every one of ``names`` (an evaluation)."""
        return all(n in self.data for n in names)


def _stack(outputs: list[StepOutput], names: list[str]) -> TensorDict:
    return {n: torch.stack([o.output[n] for o in outputs], dim=1) for n in names}


def _stack_corrections(outputs: list[StepOutput]) -> TensorDict | None:
    """Corrections per variable over the chunk; zero where a step left it alone."""
    names = list(dict.fromkeys(n for o in outputs for n in o.uncorrected))
    if not names:
        return None
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


@dataclasses.dataclass
class RolloutEnd:
    """Where a rollout stopped: what a restart needs to continue it.

    Attributes:
        state: the prognostic state after the last step, ``{name: [batch, lat, lon]}``
            (empty when this rank has no rollouts).
        corrector_state: the corrector state the rollout carried (seeded from
            its initial condition), or None when it has no rollouts.
    """

    state: TensorDict
    corrector_state: CorrectorState | None


@torch.no_grad()
def run_rollout(
    *,
    stepper: Stepper,
    data: InferenceData,
    n_forward_steps: int,
    forward_steps_in_memory: int,
    on_chunk: Callable[[RolloutChunk], None],
    device: torch.device | str = "cpu",
    initial_state: TensorDict | None = None,
    first_step: int = 0,
    corrector_state: CorrectorState | None = None,
    noise_seed: int | None = None,
) -> RolloutEnd:
    """Roll this rank's initial conditions forward chunk by chunk.

    Args:
        stepper: the model.
        data: initial conditions and data windows.
        n_forward_steps: rollout length (steps after the initial condition).
        forward_steps_in_memory: steps per chunk.
        on_chunk: receives every chunk, in order.
        device: where the model runs.
        initial_state: prognostic state to continue from (a restart) instead
            of the data at ``first_step``.
        first_step: steps already taken (a restarted rollout continues after
            them; leads keep counting from the original start).
        corrector_state: the corrector state to continue with (a restart's
            dry-air reference); None seeds it from the initial state.
        noise_seed: if given, the model's random draws (the noise of a
            stochastic network) come from a stream of their own, started from
            this seed and carried from chunk to chunk, as ACE's evaluator
            ``seed`` does: the same seed gives the same noise whatever
            ``forward_steps_in_memory`` and whatever else draws random
            numbers between the chunks (the global generator is left as it
            was).

    Returns:
        The last prognostic state and the corrector state, for a restart.
    """
    if forward_steps_in_memory < 1:
        raise ValueError(
            f"forward_steps_in_memory must be >= 1, got {forward_steps_in_memory}"
        )
    first = data.window(0, 1)
    if first is None:
        return RolloutEnd(state={}, corrector_state=None)
    initial_all = {n: v[:, 0].to(device) for n, v in first.data.items()}
    if initial_state is None:
        if first_step != 0:
            raise ValueError("a rollout continuing after step 0 needs initial_state")
        state = {n: initial_all[n] for n in stepper.prognostic_names}
    else:
        state = {n: initial_state[n].to(device) for n in stepper.prognostic_names}
    names = stepper.out_names
    ranges = [
        (step, min(forward_steps_in_memory, n_forward_steps - step) + 1)
        for step in range(first_step, n_forward_steps, forward_steps_in_memory)
    ]
    step = first_step
    # seeded once (unless continued), carried through every chunk (as ACE)
    if corrector_state is not None:
        corrector_state = corrector_state.to(device)
    noise_state: torch.Tensor | None = None
    if noise_seed is not None:
        noise_state = torch.Generator().manual_seed(noise_seed).get_state()
    for window in data.windows(ranges):
        n_leads = window.time.shape[1] - 1
        window = window.to(device)
        forcing = {n: window.data[n] for n in stepper.forcing_names}
        if corrector_state is None:
            corrector_state = stepper.initial_corrector_state(state, forcing)
        with torch.random.fork_rng(devices=[], enabled=noise_state is not None):
            if noise_state is not None:
                torch.set_rng_state(noise_state)
            outputs = list(
                stepper.rollout(
                    initial_condition=state,
                    forcing=forcing,
                    n_forward_steps=n_leads,
                    detach_uncorrected=True,
                    corrector_state=corrector_state,
                )
            )
            if noise_state is not None:
                noise_state = torch.get_rng_state()
        chunk = RolloutChunk(
            lead_start=step + 1,
            prediction=_stack(outputs, names),
            data={n: v[:, 1:] for n, v in window.data.items()},
            initial_condition=initial_all,
            corrections=_stack_corrections(outputs),
            time=window.time[:, 1:],
        )
        on_chunk(chunk)
        state = {n: outputs[-1].output[n] for n in stepper.prognostic_names}
        step += n_leads
    return RolloutEnd(state=state, corrector_state=corrector_state)
