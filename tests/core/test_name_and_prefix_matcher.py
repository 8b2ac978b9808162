import pytest

from fme.core.name_and_prefix_matcher import NameAndPrefixMatcher

NAMES = ["air_temperature", "air_temperature_0", "air_temperature_1", "PRESsfc", "air"]


@pytest.mark.parametrize(
    "entry, expected",
    [
        (
            "air_temperature",
            ["air_temperature", "air_temperature_0", "air_temperature_1"],
        ),
        ("air_temperature_", ["air_temperature_0", "air_temperature_1"]),
        ("air_temperature_1", ["air_temperature_1"]),
        ("air", ["air"]),
        ("PRES", []),
    ],
)
def test_selects_by_rule(entry, expected):
    assert NameAndPrefixMatcher([entry]).select(NAMES) == expected


def test_unmatched_entries_reports_typos():
    matcher = NameAndPrefixMatcher(["PRESsfc", "air_temprature"])
    assert matcher.unmatched_entries(NAMES) == ["air_temprature"]
