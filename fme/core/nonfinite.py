"""Non-finite values in training state: the error type and where to find them."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch


class NonFiniteError(RuntimeError):
    """A loss, gradient, update or state became NaN or infinite.

    Raised before the optimiser step or the checkpoint write that would carry
    the value forward; the trainer adds whether a checkpoint was written.
    """


def first_nonfinite_tensor(tree: Any, *, path: str = "") -> str | None:
    """The dotted path of the first floating tensor in ``tree`` with NaN/inf.

    Walks nested mappings and sequences (state dicts, optimiser states);
    other values are ignored.
    """
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            if not bool(torch.isfinite(tree).all()):
                return path or "<tensor>"
        return None
    if isinstance(tree, Mapping):
        items: Any = tree.items()
    elif isinstance(tree, Sequence) and not isinstance(tree, str | bytes):
        items = enumerate(tree)
    else:
        return None
    for key, value in items:
        found = first_nonfinite_tensor(
            value, path=f"{path}.{key}" if path else str(key)
        )
        if found is not None:
            return found
    return None
