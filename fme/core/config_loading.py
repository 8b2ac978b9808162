"""Strict loading of dataclass configs from YAML with dotted overrides.

A config dataclass may define a classmethod ``migrate_keys(data) -> data``
that rewrites former spellings of its keys to the current ones; the loader
applies it to the raw mapping, outermost first, before the strict check.
"""

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import dacite
import yaml

from fme.core.number_check import check_finite_numbers

T = TypeVar("T")

_DACITE_CONFIG = dacite.Config(strict=True, cast=[tuple])


class ConfigError(ValueError):
    """A config that does not match its schema; the message names the key path."""


def from_dict_strict(cls: type[T], data: Any, *, path: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise.

    Args:
        cls: the dataclass to build.
        data: a plain dict, as read from YAML.
        path: where ``data`` sits in the whole config, for error messages.

    Raises:
        ConfigError: naming the offending key path and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping for {cls.__name__}, got {type(data).__name__}"
        )
    try:
        data = _migrate(cls, data)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    _check_unknown_keys(cls, data, path)
    try:
        check_finite_numbers(data, path=path)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        return dacite.from_dict(cls, data, config=_DACITE_CONFIG)
    except dacite.UnexpectedDataError as err:
        allowed = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        keys = ", ".join(sorted(err.keys))
        raise ConfigError(
            f"{path}: unknown key(s) {keys}; allowed keys here: {allowed}"
        ) from None
    except dacite.WrongTypeError as err:
        _raise_from_union_member(err, path)
        raise ConfigError(
            f"{path}.{err.field_path}: expected type {_type_name(err.field_type)}, "
            f"got {err.value!r}"
        ) from None
    except dacite.MissingValueError as err:
        raise ConfigError(f"{path}.{err.field_path}: required key is missing") from None
    except dacite.DaciteError as err:
        raise ConfigError(f"{path}: {err}") from None
    except ValueError as err:  # __post_init__ validation of a nested config
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path}: {err}") from None


def _raise_from_union_member(err: dacite.WrongTypeError, path: str) -> None:
    """For a union of configs, re-build the member the value fits to show its error.

    dacite reports a member's ``__post_init__`` error inside a union only as a
    wrong type; building the one fitting member again raises the real message.
    """
    options = _dataclass_options(err.field_type)
    if len(options) < 2 or not isinstance(err.value, dict):
        return
    fitting = [o for o in options if _fits(o, err.value)]
    if fitting:
        from_dict_strict(fitting[0], err.value, path=f"{path}.{err.field_path}")


def _list_item_options(tp: Any) -> list[type]:
    """The dataclasses a ``list[X]`` member of a union type may hold."""
    members = (
        typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType)
        else (tp,)
    )
    for member in members:
        if typing.get_origin(member) is list and typing.get_args(member):
            return _dataclass_options(typing.get_args(member)[0])
    return []


def _dataclass_options(tp: Any) -> list[type]:
    """The dataclasses a field type may hold directly (``X``, ``X | None``)."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return [tp]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [
            a
            for a in typing.get_args(tp)
            if isinstance(a, type) and dataclasses.is_dataclass(a)
        ]
    return []


def _migrate(cls: type, data: Any) -> Any:
    """``data`` with every ``migrate_keys`` below ``cls`` applied."""
    if not isinstance(data, dict):
        return data
    migrate = getattr(cls, "migrate_keys", None)
    if migrate is not None:
        data = migrate(data)
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for name, value in data.items():
        if name not in hints:
            continue
        field_type = hints[name]
        options = _dataclass_options(field_type)
        if typing.get_origin(field_type) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(field_type) if a is not type(None)]
            field_type = non_none[0] if len(non_none) == 1 else field_type
        origin, args = typing.get_origin(field_type), typing.get_args(field_type)
        if len(options) == 1:
            out[name] = _migrate(options[0], value)
        elif origin is list and args and isinstance(value, list):
            inner = _dataclass_options(args[0])
            if len(inner) == 1:
                out[name] = [_migrate(inner[0], item) for item in value]
        elif origin is dict and len(args) == 2 and isinstance(value, dict):
            inner = _dataclass_options(args[1])
            if len(inner) == 1:
                out[name] = {k: _migrate(inner[0], v) for k, v in value.items()}
    return out


def _check_unknown_keys(cls: type, data: Any, path: str) -> None:
    """Reject unknown keys anywhere below ``cls``, naming the full key path."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in data if k not in fields)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed keys here: {sorted(fields)}"
        )
    for name, value in data.items():
        field_type = hints[name]
        options = _dataclass_options(field_type)
        list_options = _list_item_options(field_type)
        if isinstance(value, list) and list_options:
            for i, item in enumerate(value):
                _check_union(list_options, item, f"{path}.{name}[{i}]")
            continue
        if options:
            _check_union(options, value, f"{path}.{name}")
            continue
        origin = typing.get_origin(field_type)
        args = typing.get_args(field_type)
        if origin is list and args and isinstance(value, list):
            inner = _dataclass_options(args[0])
            if inner:
                for i, item in enumerate(value):
                    _check_union(inner, item, f"{path}.{name}[{i}]")
        elif origin is dict and len(args) == 2 and isinstance(value, dict):
            inner = _dataclass_options(args[1])
            if inner:
                for key, item in value.items():
                    _check_union(inner, item, f"{path}.{name}.{key}")


def _check_union(options: list[type], value: Any, path: str) -> None:
    """Check ``value`` against the one dataclass of ``options`` it can be.

    The candidate is the option whose fields include all of ``value``'s keys
    and whose required fields are all given (e.g. ``{concat: [...]}`` is a
    concat config, ``{data_path: ...}`` a single dataset). When no option
    fits, the error lists each option's keys.
    """
    if len(options) == 1 or not isinstance(value, dict):
        _check_unknown_keys(options[0], value, path)
        return
    fitting = [o for o in options if _fits(o, value)]
    if len(fitting) >= 1:
        _check_unknown_keys(fitting[0], value, path)
        return
    described = "; ".join(
        f"{o.__name__}: {sorted(f.name for f in dataclasses.fields(o))}"
        for o in options
    )
    raise ConfigError(
        f"{path}: keys {sorted(map(str, value))} match none of the allowed forms "
        f"({described})"
    )


def _fits(cls: type, value: dict) -> bool:
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields if f.init}
    required = {
        f.name
        for f in fields
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    }
    return set(value) <= names and required <= set(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict.

    Raises:
        ConfigError: if an override has no ``=`` or walks into a non-mapping.
    """
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"override {override!r} must look like key.path=value, e.g. max_epochs=2"
            )
        key_path, raw_value = override.split("=", 1)
        keys = key_path.split(".")
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                walked = ".".join(keys[: i + 1])
                raise ConfigError(f"override {override!r}: {walked} is not a mapping")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw_value)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {override!r}: not valid YAML ({_yaml_problem(err)})"
            ) from None
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error's problem in one line, without the quoted source lines."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{problem} ({context})" if context else str(problem)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a dict.

    Raises:
        ConfigError: the file is missing, not a mapping, or not valid YAML
            (one line: ``file:line:column: YAML syntax error: ...``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open() as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""
            raise ConfigError(
                f"{path}:{where} YAML syntax error: {_yaml_problem(err)}"
            ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (the inverse of ``from_dict_strict``)."""
    return dataclasses.asdict(config)
