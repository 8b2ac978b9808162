"""A network run through ``torch.compile``, falling back to eager on failure.

``stepper_training.compile: true`` wraps the network (only the network: the
normalisation, corrector and loss stay eager) in :class:`CompiledNetwork`.
Compilation happens at the first call. If it fails for any reason (no C++
compiler for the CPU backend, an operator the compiler does not handle, a
backend error), the reason is logged once as a warning and the network runs
eagerly from then on: the run continues with the same numbers as an eager
run. The backward graph is compiled together with the forward one, so a
failure surfaces at the first forward call, before any gradient is computed.
"""

import logging
from typing import Any

import torch
from torch import nn

_BACKEND = "inductor"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    """The error and its root cause, one line each, joined."""
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    inner = getattr(root, "inner_exception", None)
    if isinstance(inner, BaseException):
        root = inner
    if root is err:
        return _first_line(err)
    return f"{_first_line(err)} {_first_line(root)}"


class CompiledNetwork(nn.Module):
    """``module`` run through ``torch.compile``, eagerly once compiling failed.

    The wrapped network stays at ``self.module`` (as in a data-parallel
    wrapper): its parameters and ``state_dict`` are the network's.

    Args:
        module: the network.
        backend: the ``torch.compile`` backend (a name or a callable).
    """

    def __init__(self, module: nn.Module, *, backend: Any = None):
        super().__init__()
        self.module = module
        # kept in a tuple so the compiled wrapper is not a second submodule
        # (its parameters and state_dict keys would appear twice)
        self._compiled = (
            torch.compile(module, backend=_BACKEND if backend is None else backend),
        )
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """Why compiling failed (None while the compiled network runs)."""
        return self._failure

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._failure is None:
            try:
                # compile the backward graph now, so its failure is caught here
                with torch._functorch.config.patch(
                    force_non_lazy_backward_lowering=True
                ):
                    return self._compiled[0](*args, **kwargs)
            except Exception as err:  # any compiler failure: run eagerly
                self._failure = _reason(err)
                logging.warning(
                    "stepper_training.compile: compiling the network failed, "
                    "running it eagerly instead (%s)",
                    self._failure,
                )
        return self.module(*args, **kwargs)


def compile_network(module: nn.Module, *, backend: Any = None) -> CompiledNetwork:
    """``module`` wrapped for ``torch.compile`` with an eager fallback."""
    logging.info("stepper_training.compile: the network runs through torch.compile")
    return CompiledNetwork(module, backend=backend)
