"""A small registry mapping short YAML type names to builder classes."""

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a short ``type`` name used in YAML to a config dataclass.

    Args:
        kind: what the registry holds, used in error messages (e.g. "module").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator registering ``cls`` under ``name``."""

        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} type {name!r} is registered twice")
            self._entries[name] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; a ValueError lists the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} type {name!r}; allowed: {self.names()}"
            ) from None

    def from_dict(self, name: str, config: dict[str, Any]) -> T:
        """Build the config dataclass registered under ``name`` from a plain dict."""
        from fme.core.config_loading import from_dict_strict

        return from_dict_strict(self.get(name), config, path=f"{self.kind}.config")
