"""The SFNO's spectral weights: ACE's shapes over mode-major memory.

ACE's spectral weights have shape ``(in, out, *modes, 2)``: modes ``[l]`` for
the dhconv, ``[l, m]`` for the diagonal operator, the last axis (real,
imaginary). Here a weight's memory is ``[*reversed(modes), in, out, 2]`` (m
outermost, matching the m-major coefficients of the transforms), so each
mode's ``[in, out]`` matrix is contiguous and the products read the weights
without a copy. The parameter itself is a permuted view of that memory with
ACE's shape, so checkpoints hold ACE's shapes.
"""

import torch
from torch import nn


def _memory_order(n_modes: int) -> list[int]:
    """The axes of ``(in, out, *modes, 2)`` in memory order."""
    return [*reversed(range(2, 2 + n_modes)), 0, 1, 2 + n_modes]


def mode_major_parameter(
    *, in_channels: int, out_channels: int, modes: list[int], std: float
) -> nn.Parameter:
    """A normal(0, ``std``) parameter of shape ``(in, out, *modes, 2)`` stored
    mode-major."""
    memory = torch.randn(*reversed(modes), in_channels, out_channels, 2) * std
    return nn.Parameter(from_mode_major(memory))


def to_mode_major(weight: torch.Tensor) -> torch.Tensor:
    """``(in, out, *modes, 2)`` -> ``[*reversed(modes), in, out, 2]``, a view
    (contiguous for a weight stored mode-major)."""
    return weight.permute(*_memory_order(weight.dim() - 3))


def from_mode_major(memory: torch.Tensor) -> torch.Tensor:
    """``[*reversed(modes), in, out, 2]`` -> ``(in, out, *modes, 2)``, a view;
    the inverse of ``to_mode_major``."""
    order = _memory_order(memory.dim() - 3)
    return memory.permute(*sorted(range(len(order)), key=order.__getitem__))
