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


@dataclasses.dataclass
class WithNumbers:
    rate: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)
    items: list = dataclasses.field(default_factory=list)


@pytest.mark.parametrize(
    "data, path",
    [
        ({"rate": float("nan")}, r"config\.rate"),
        ({"rate": float("inf")}, r"config\.rate"),
        ({"rate": float("-inf")}, r"config\.rate"),
        ({"kwargs": {"betas": [0.9, float("nan")]}}, r"config\.kwargs\.betas\[1\]"),
        ({"items": [{"eps": float("inf")}]}, r"config\.items\[0\]\.eps"),
    ],
)
def test_non_finite_numbers_are_refused_with_the_key_path(data, path):
    # `<= 0` range checks are False for NaN, so NaN must be caught on its own
    with pytest.raises(ConfigError, match=path + r": must be a finite number, got"):
        from_dict_strict(WithNumbers, data)


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    line, column = message.split(":")[1:3]
    assert (int(line), int(column)) == (3, 2)
    assert "YAML syntax error" in message


def test_yaml_syntax_error_in_an_override_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'a=\[1': not valid YAML"):
        apply_overrides({}, ["a=[1"])
