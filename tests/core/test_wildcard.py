import pytest

from fme.core.wildcard import check_all_patterns_match, matches_any, select

NAMES = [
    "encoder.0.weight",
    "encoder.0.bias",
    "blocks.0.mlp.0.weight",
    "decoder.weight",
]


def test_star_matches_across_dots_and_exact_names_match_exactly():
    assert select(NAMES, ["encoder.*"]) == ["encoder.0.weight", "encoder.0.bias"]
    assert select(NAMES, ["*.weight"]) == [
        "encoder.0.weight",
        "blocks.0.mlp.0.weight",
        "decoder.weight",
    ]
    assert select(NAMES, ["decoder.weight"]) == ["decoder.weight"]
    assert not matches_any("decoder.weight", ["decoder"])
    assert matches_any("blocks.0.mlp.0.weight", ["blocks.?.mlp.*"])


def test_unmatched_pattern_names_the_field_and_the_pattern():
    check_all_patterns_match(["encoder.*"], NAMES, field="f")
    with pytest.raises(
        ValueError, match=r"frozen\.include: pattern\(s\) \['encodr\.\*'\]"
    ):
        check_all_patterns_match(
            ["encoder.*", "encodr.*"], NAMES, field="frozen.include"
        )
