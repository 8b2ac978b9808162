"""Tests of choosing a corrector from YAML-like dicts."""

import pytest
import torch

from fme.ace.corrector.atmosphere import AtmosphereCorrector, AtmosphereCorrectorConfig
from fme.ace.corrector.registry import CORRECTOR_REGISTRY, CorrectorSelector
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.config_loading import ConfigError, from_dict_strict, to_dict
from fme.core.gridded_ops import LatLonOperations

OUT_NAMES = ["PRESsfc", "specific_total_water_0", "specific_total_water_1", "TMP2m"]


def build(selector: CorrectorSelector) -> AtmosphereCorrector:
    corrector = selector.build(
        gridded_operations=LatLonOperations(torch.ones(4, 8)),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor([0.0, 3000.0, 0.0]), bk=torch.tensor([0.0, 0.2, 1.0])
        ),
        out_names=OUT_NAMES,
    )
    assert isinstance(corrector, AtmosphereCorrector)
    return corrector


def test_atmosphere_corrector_is_registered():
    assert CORRECTOR_REGISTRY.names() == ["atmosphere_corrector"]
    assert CORRECTOR_REGISTRY.get("atmosphere_corrector") is AtmosphereCorrectorConfig


def test_selector_from_yaml_dict_builds_the_configured_corrector():
    data = {
        "type": "atmosphere_corrector",
        "config": {
            "conserve_dry_air": True,
            "force_positive_names": ["specific_total_water"],
            "conserve_global_mean_names": ["TMP2m"],
        },
    }
    selector = from_dict_strict(CorrectorSelector, data, path="corrector")
    corrector = build(selector)
    assert set(corrector.changed_names) == set(OUT_NAMES)
    assert to_dict(selector) == data  # round trip


def test_empty_config_is_allowed():
    corrector = build(CorrectorSelector(type="atmosphere_corrector"))
    assert corrector.changed_names == []


def test_unknown_type_lists_allowed_types():
    with pytest.raises(
        ValueError, match="'ace'.*allowed: \\['atmosphere_corrector'\\]"
    ):
        CorrectorSelector(type="ace")


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="conserve_dry_mass.*conserve_dry_air"):
        CorrectorSelector(
            type="atmosphere_corrector", config={"conserve_dry_mass": True}
        )


def test_wrong_config_type_is_named():
    with pytest.raises(ConfigError, match="force_positive_names"):
        CorrectorSelector(
            type="atmosphere_corrector", config={"force_positive_names": "TMP2m"}
        )


def test_unknown_variable_is_an_error_at_build():
    selector = CorrectorSelector(
        type="atmosphere_corrector", config={"force_positive_names": ["Q2m"]}
    )
    with pytest.raises(ValueError, match="'Q2m'.*TMP2m"):
        build(selector)
