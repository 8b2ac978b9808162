"""The one check of a number read from a config: type, finiteness, bounds."""

import math
from typing import Any, cast


def check_number(
    value: Any,
    *,
    path: str,
    minimum: float | None = None,
    exclusive: bool = False,
    integer: bool = False,
) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``path``.

    Args:
        value: the config value.
        path: its key path, for the message (e.g. ``optimization.lr``).
        minimum: lower bound, if any.
        exclusive: the bound itself is not allowed (``> minimum``).
        integer: only ints are accepted.

    Raises:
        ValueError: for a bool, a non-number (with a hint for YAML's ``1e-5``,
            which it reads as text), a non-finite value or one out of bounds.
    """
    kind = "an integer" if integer else "a number"
    allowed: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        hint = (
            " (YAML reads 1e-5 as text; write 1.0e-5)" if isinstance(value, str) else ""
        )
        raise ValueError(f"{path} must be {kind}, got {value!r}{hint}")
    number = float(cast(float, value))
    if not math.isfinite(number):
        raise ValueError(f"{path} must be finite, got {value!r}")
    if minimum is not None and (number <= minimum if exclusive else number < minimum):
        relation = ">" if exclusive else ">="
        raise ValueError(f"{path} must be {relation} {minimum:g}, got {value!r}")
    return number


def check_finite_numbers(data: Any, *, path: str = "config") -> None:
    """Refuse NaN and infinite numbers anywhere in ``data``, naming the key path.

    The one check of finiteness for everything read from YAML (including
    free-form ``kwargs`` passed to torch): a range check such as ``x <= 0`` is
    False for NaN, so a NaN would otherwise pass every range check. No setting
    means "no limit" by infinity; those use null.

    Raises:
        ValueError: ``<path>: must be a finite number, got nan``.
    """
    if isinstance(data, float) and not math.isfinite(data):
        raise ValueError(
            f"{path}: must be a finite number, got {data!r}; "
            "use null where a setting allows no limit"
        )
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite_numbers(value, path=f"{path}.{key}")
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            check_finite_numbers(value, path=f"{path}[{i}]")
