import dataclasses

import pytest

from fme.core.config_loading import (
    ConfigError,
    apply_overrides,
    from_dict_strict,
    load_yaml,
    to_dict,
)


@dataclasses.dataclass
class Inner:
    value: int = 1

    def __post_init__(self):
        if self.value < 0:
            raise ValueError("value must be >= 0")


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: float | None = None


def test_round_trip_equal():
    config = from_dict_strict(Outer, {"name": "a", "inner": {"value": 3}})
    assert from_dict_strict(Outer, to_dict(config)) == config


def test_unknown_key_names_path_and_allowed():
    with pytest.raises(ConfigError, match=r"config: unknown key\(s\) nme.*'name'"):
        from_dict_strict(Outer, {"nme": "a"})


def test_wrong_type_names_field_path():
    with pytest.raises(ConfigError, match=r"config.inner.value: expected type int"):
        from_dict_strict(Outer, {"name": "a", "inner": {"value": "x"}})


def test_missing_key():
    with pytest.raises(ConfigError, match=r"config.name: required key is missing"):
        from_dict_strict(Outer, {})


def test_post_init_error_wrapped():
    with pytest.raises(ConfigError, match="value must be >= 0"):
        from_dict_strict(Outer, {"name": "a", "inner": {"value": -1}})


def test_overrides_parse_yaml_values():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=[1, 2]", "d=text"])
    assert data == {"a": {"b": 2.5, "c": [1, 2]}, "d": "text"}
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["oops"])


def test_load_yaml_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


@dataclasses.dataclass
class Holder:
    items: list[Inner] = dataclasses.field(default_factory=list)
    named: dict[str, Inner] = dataclasses.field(default_factory=dict)
    maybe: Inner | None = None


@pytest.mark.parametrize(
    "data, path",
    [
        ({"items": [{"value": 1}, {"valu": 2}]}, r"config.items\[1\]"),
        ({"named": {"x": {"vale": 2}}}, r"config.named.x"),
        ({"maybe": {"v": 2}}, r"config.maybe"),
    ],
)
def test_unknown_nested_key_names_full_path(data, path):
    with pytest.raises(ConfigError, match=path + r": unknown key\(s\) .*\['value'\]"):
        from_dict_strict(Holder, data)
