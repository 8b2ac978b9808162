import pytest
import torch

from fme.ace.models import MODULE_REGISTRY, ModuleSelector
from fme.core.config_loading import ConfigError, from_dict_strict, to_dict

SMALL_CONFIGS = {
    "SphericalFourierNeuralOperatorNet": {"embed_dim": 4, "num_layers": 1},
    "ConvNet": {"hidden_channels": 4},
    "Linear1x1": {},
}


def test_modules_are_registered_on_import():
    assert set(SMALL_CONFIGS) <= set(MODULE_REGISTRY.names())
    assert ModuleSelector.available_types() == MODULE_REGISTRY.names()


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
@pytest.mark.parametrize("img_shape", [(8, 16), (7, 12)])
def test_every_module_maps_in_channels_to_out_channels(name, img_shape):
    selector = ModuleSelector(type=name, config=SMALL_CONFIGS[name])
    module = selector.build(n_in_channels=3, n_out_channels=5, img_shape=img_shape)
    assert module(torch.randn(2, 3, *img_shape)).shape == (2, 5, *img_shape)


def test_unknown_type_lists_the_registered_names():
    with pytest.raises(ValueError) as err:
        ModuleSelector(type="SFNO")
    message = str(err.value)
    assert "'SFNO'" in message
    for name in SMALL_CONFIGS:
        assert name in message


def test_unknown_config_key_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="embed_dims") as err:
        ModuleSelector(
            type="SphericalFourierNeuralOperatorNet", config={"embed_dims": 16}
        )
    assert "embed_dim" in str(err.value).split("allowed keys here:")[1]


def test_wrong_type_of_value_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="num_layers"):
        ModuleSelector(type="ConvNet", config={"num_layers": "two"})


def test_invalid_value_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="kernel_size"):
        ModuleSelector(type="ConvNet", config={"kernel_size": 4})
    with pytest.raises(ValueError, match="activation_function"):
        ModuleSelector(
            type="SphericalFourierNeuralOperatorNet",
            config={"activation_function": "tanh"},
        )


def test_selector_loads_strictly_from_yaml_dict_and_round_trips():
    data = {
        "type": "SphericalFourierNeuralOperatorNet",
        "config": {"embed_dim": 16, "num_layers": 2},
    }
    selector = from_dict_strict(ModuleSelector, data, path="builder")
    assert selector.module_config.embed_dim == 16  # type: ignore[attr-defined]
    assert selector.module_config.num_layers == 2  # type: ignore[attr-defined]
    assert to_dict(selector) == data
    with pytest.raises(ConfigError, match="configs"):
        from_dict_strict(ModuleSelector, {**data, "configs": {}}, path="builder")


def test_selector_config_is_not_mutated():
    config = {"hidden_channels": 4}
    selector = ModuleSelector(type="ConvNet", config=config)
    selector.build(n_in_channels=1, n_out_channels=1, img_shape=(4, 8))
    assert selector.config == {"hidden_channels": 4}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_in_channels": 0, "n_out_channels": 1, "img_shape": (4, 8)},
        {"n_in_channels": 1, "n_out_channels": 0, "img_shape": (4, 8)},
        {"n_in_channels": 1, "n_out_channels": 1, "img_shape": (0, 8)},
    ],
)
def test_invalid_build_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ModuleSelector(type="Linear1x1").build(**kwargs)
