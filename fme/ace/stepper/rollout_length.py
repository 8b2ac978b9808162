"""The rollout length of each training batch: fixed or sampled."""

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class ForwardStepsOutcome:
    """One possible rollout length and its probability.

    Attributes:
        n_forward_steps: the rollout length.
        probability: its probability (all outcomes must sum to 1).
    """

    n_forward_steps: int
    probability: float


@dataclasses.dataclass
class ForwardStepsDistribution:
    """A random rollout length per batch: ``{outcomes: [...]}``.

    Attributes:
        outcomes: the possible lengths and their probabilities.
    """

    outcomes: list[ForwardStepsOutcome]

    def __post_init__(self):
        if not self.outcomes:
            raise ValueError("stepper_training.n_forward_steps.outcomes is empty")
        total = sum(o.probability for o in self.outcomes)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                "stepper_training.n_forward_steps.outcomes probabilities must sum "
                f"to 1, got {total}"
            )
        for o in self.outcomes:
            if o.n_forward_steps < 1 or o.probability < 0:
                raise ValueError(
                    "stepper_training.n_forward_steps.outcomes need "
                    f"n_forward_steps >= 1 and probability >= 0, got {o}"
                )


def max_forward_steps(n_forward_steps: int | ForwardStepsDistribution) -> int:
    """The longest rollout ``n_forward_steps`` may ask for."""
    if isinstance(n_forward_steps, int):
        return n_forward_steps
    return max(o.n_forward_steps for o in n_forward_steps.outcomes)


class RolloutLengthSampler:
    """Draws each batch's rollout length (the same on every rank).

    Args:
        n_forward_steps: a fixed length or a distribution.
        seed: seeds the draws.
    """

    def __init__(self, n_forward_steps: int | ForwardStepsDistribution, *, seed: int):
        self._fixed = isinstance(n_forward_steps, int)
        if isinstance(n_forward_steps, int):
            self._lengths, self._probabilities = [n_forward_steps], [1.0]
        else:
            self._lengths = [o.n_forward_steps for o in n_forward_steps.outcomes]
            self._probabilities = [o.probability for o in n_forward_steps.outcomes]
        self._rng = np.random.default_rng(seed)

    @property
    def max_length(self) -> int:
        """The longest rollout (validation rolls out this far)."""
        return max(self._lengths)

    def sample(self) -> int:
        """The next batch's rollout length."""
        if self._fixed:
            return self._lengths[0]
        return int(self._rng.choice(self._lengths, p=self._probabilities))

    def get_state(self) -> dict[str, Any]:
        """The random generator's state."""
        return dict(self._rng.bit_generator.state)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore ``get_state()`` output."""
        self._rng.bit_generator.state = state
