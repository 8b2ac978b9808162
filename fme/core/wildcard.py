"""Wildcard patterns over parameter and module names (``encoder.*``, ``*.bias``).

Patterns use shell-style wildcards (``fnmatch``, case-sensitive): ``*`` matches
any run of characters *including dots*, so ``blocks.*`` selects every
parameter below ``blocks`` and ``*.bias`` every bias; ``?`` matches one
character and ``[01]`` one of a set. A pattern without a wildcard must equal
the name.
"""

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether any of ``patterns`` matches ``name``."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def select(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names some pattern matches, in the given order."""
    return [name for name in names if matches_any(name, patterns)]


def check_all_patterns_match(
    patterns: Sequence[str], names: Sequence[str], *, field: str
) -> None:
    """Raise if a pattern matches none of ``names`` (typo protection).

    Args:
        patterns: the configured patterns.
        names: every name the patterns could select.
        field: the config key holding ``patterns``, for the message.

    Raises:
        ValueError: naming the patterns that match nothing and a few names.
    """
    unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unmatched:
        examples = list(names[:8]) + (["..."] if len(names) > 8 else [])
        raise ValueError(
            f"{field}: pattern(s) {unmatched} match no name; names look like "
            f"{examples} (wildcards: '*' also matches dots, e.g. 'encoder.*')"
        )
