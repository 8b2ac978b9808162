"""Select variables by name the same way everywhere in fme.

A bare name matches the 2D variable and all its levels (``name``, ``name_0``,
``name_1`` ...); a trailing underscore matches all levels only (``name_``);
``name_<level>`` matches exactly.
"""

from collections.abc import Iterable


class NameAndPrefixMatcher:
    """Matches variable names against a list of names and level prefixes.

    Args:
        entries: names (``air_temperature``), level prefixes
            (``air_temperature_``) or exact level names (``air_temperature_3``).
    """

    def __init__(self, entries: Iterable[str]):
        self.entries = list(entries)

    @staticmethod
    def entry_matches(entry: str, name: str) -> bool:
        """Whether one entry selects variable ``name``."""
        if entry.endswith("_"):
            return name.startswith(entry) and name[len(entry) :].isdigit()
        if name == entry:
            return True
        return name.startswith(entry + "_") and name[len(entry) + 1 :].isdigit()

    def matches(self, name: str) -> bool:
        """Whether any entry selects ``name``."""
        return any(self.entry_matches(entry, name) for entry in self.entries)

    def select(self, names: Iterable[str]) -> list[str]:
        """The names that some entry selects, in the given order."""
        return [name for name in names if self.matches(name)]

    def unmatched_entries(self, names: Iterable[str]) -> list[str]:
        """Entries that select none of ``names`` (typo protection)."""
        names = list(names)
        return [
            e for e in self.entries if not any(self.entry_matches(e, n) for n in names)
        ]
