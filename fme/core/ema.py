"""Exponential moving average (EMA) of a network's weights, as in ACE.

After every optimiser step ``t = 1, 2, ...`` each parameter's average moves
towards the parameter::

    d_t = min(decay, (1 + t) / (10 + t))   if faster_decay_at_start else decay
    ema_t = ema_{t-1} - (1 - d_t) * (ema_{t-1} - p_t),   ema_0 = p_0

where ``p_0`` are the weights when the tracker was built. The averaging is
``torch.optim.swa_utils.AveragedModel`` with that update as its ``avg_fn``.
The trainer updates the tracker, validates (and runs inline inference) with
the averaged weights in place when asked (ACE's ``validate_using_ema``), and
saves ``get_state()`` in every checkpoint under ``ema``, the same layout the
conversion of ACE checkpoints produces, so exact resume includes it.
"""

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


@dataclasses.dataclass
class EMAConfig:
    """ACE's ``ema`` section.

    Attributes:
        decay: the decay rate of the moving average, in [0, 1].
        faster_decay_at_start: use ``min(decay, (1 + t) / (10 + t))`` at
            optimiser step ``t`` (ACE's default), so early averages forget the
            random initial weights quickly.
        resume_ema_ckpt_path: a training checkpoint (ours or ACE's ``ckpt.tar``)
            whose EMA weights and update count start this run's average, for
            fine-tuning; ``decay`` and ``faster_decay_at_start`` stay this
            config's. A resumed run's own checkpoint takes precedence.
    """

    decay: float = 0.9999
    faster_decay_at_start: bool = True
    resume_ema_ckpt_path: str | None = None

    def __post_init__(self):
        if not 0.0 <= self.decay <= 1.0:
            raise ValueError(f"ema.decay must be in [0, 1], got {self.decay}")

    def build(self, module: nn.Module) -> "EMATracker":
        """A tracker of ``module``'s parameters, starting at their current values."""
        return EMATracker(
            module, decay=self.decay, faster_decay_at_start=self.faster_decay_at_start
        )


class EMATracker:
    """The moving average of a module's parameters.

    Args:
        module: the (unwrapped) network; its parameters at construction are
            the average's start.
        decay: see :class:`EMAConfig`.
        faster_decay_at_start: see :class:`EMAConfig`.
    """

    def __init__(self, module: nn.Module, *, decay: float, faster_decay_at_start: bool):
        self.module = module
        self.decay = decay
        self.faster_decay_at_start = faster_decay_at_start

        def average(
            averaged: torch.Tensor,
            current: torch.Tensor,
            n_averaged: torch.Tensor | int,
        ) -> torch.Tensor:
            # n_averaged counts the initial copy: the t-th update sees n = t
            t = float(n_averaged)
            d = decay
            if faster_decay_at_start:
                d = min(decay, (1.0 + t) / (10.0 + t))
            return averaged - (1.0 - d) * (averaged - current)

        self._averaged = AveragedModel(module, avg_fn=average)
        self._averaged.update_parameters(module)  # ema_0 = p_0
        self._in_context = False

    @property
    def num_updates(self) -> int:
        """Optimiser steps averaged so far."""
        return int(self._averaged.n_averaged) - 1

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by the module's parameter names."""
        return dict(self._averaged.module.named_parameters())

    def update(self) -> None:
        """Move the average towards the module's current parameters."""
        with torch.no_grad():
            self._averaged.update_parameters(self.module)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the averaged parameters inside this context."""
        if self._in_context:
            raise RuntimeError("EMATracker.applied() contexts cannot be nested")
        current = dict(self.module.named_parameters())
        stored = {k: p.detach().clone() for k, p in current.items()}
        self._in_context = True
        try:
            with torch.no_grad():
                for name, value in self.params.items():
                    current[name].copy_(value)
            yield
        finally:
            with torch.no_grad():
                for name, value in stored.items():
                    current[name].copy_(value)
            self._in_context = False

    def get_state(self) -> dict[str, Any]:
        """Plain data: decay settings, update count and averaged parameters."""
        return {
            "decay": self.decay,
            "faster_decay_at_start": self.faster_decay_at_start,
            "num_updates": self.num_updates,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
        }

    def load_state(self, state: dict[str, Any], *, keep_settings: bool = False) -> None:
        """Restore ``get_state()`` output (ours, or converted from ACE).

        Args:
            state: the saved state; must hold ``params``.
            keep_settings: keep this tracker's ``decay`` and
                ``faster_decay_at_start`` (fine-tuning from another run).

        Raises:
            ValueError: the state holds no averaged parameters or other names.
        """
        if "params" not in state:
            raise ValueError(
                "the EMA state holds no averaged weights (ACE writes them only to "
                "checkpoints saved with their optimisation state, e.g. ckpt.tar)"
            )
        own = self.params
        params = state["params"]
        if sorted(params) != sorted(own):
            missing = sorted(set(own) - set(params))
            extra = sorted(set(params) - set(own))
            raise ValueError(
                f"the EMA state does not match the network: missing {missing}, "
                f"unexpected {extra}"
            )
        with torch.no_grad():
            for name, value in params.items():
                own[name].copy_(value)
            self._averaged.n_averaged.fill_(int(state["num_updates"]) + 1)
        if not keep_settings:
            if (float(state["decay"]), bool(state["faster_decay_at_start"])) != (
                self.decay,
                self.faster_decay_at_start,
            ):
                raise ValueError(
                    "the EMA state was tracked with decay="
                    f"{state['decay']}, faster_decay_at_start="
                    f"{state['faster_decay_at_start']}; this run has "
                    f"{self.decay}, {self.faster_decay_at_start}"
                )
