"""Every YAML under configs/ loads strictly and round-trips through a dict."""

from pathlib import Path

import pytest

from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.train.config import TrainConfig, load_train_config
from fme.core.config_loading import from_dict_strict, load_yaml, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_strictly_and_round_trips(path):
    data = load_yaml(path)
    if "checkpoint_path" in data:
        config = from_dict_strict(EvaluatorConfig, data)
        assert from_dict_strict(EvaluatorConfig, to_dict(config)) == config
        return
    config = load_train_config(path)
    assert isinstance(config, TrainConfig)
    round_tripped = from_dict_strict(TrainConfig, to_dict(config))
    assert to_dict(round_tripped) == to_dict(config)
