"""Prescribed ocean, next-step forcing and the multi_call step, through the rollout."""

import datetime
from typing import Any

import pytest
import torch

from fme.ace.data.batch import DatasetInfo
from fme.ace.step.multi_call import MultiCallStep
from fme.ace.step.single_module import SingleModuleStep
from fme.ace.stepper.stepper import Stepper, StepperConfig
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.core.config_loading import ConfigError, from_dict_strict

N_LAT, N_LON, BATCH, N_TIMES = 4, 8, 2, 4
NAMES = ["sst", "a", "frac", "sw"]  # sst, a prognostic; frac, sw forcing
MEANS = {"sst": 290.0, "a": 1.0, "frac": 0.5, "sw": 300.0}
STDS = {"sst": 5.0, "a": 2.0, "frac": 0.3, "sw": 100.0}


def info() -> DatasetInfo:
    return DatasetInfo(
        lat=torch.linspace(-60.0, 60.0, N_LAT),
        lon=torch.arange(N_LON) * 360.0 / N_LON,
        timestep=datetime.timedelta(hours=6),
    )


def single_config(**extra: Any) -> dict[str, Any]:
    return {
        "builder": {"type": "Linear1x1", "config": {}},
        "in_names": ["sst", "a", "frac", "sw"],
        "out_names": ["sst", "a"],
        "normalization": {"network": {"means": MEANS, "stds": STDS}},
        **extra,
    }


def build(step: dict[str, Any], seed: int = 0) -> Stepper:
    torch.manual_seed(seed)
    config = from_dict_strict(StepperConfig, {"step": step}, path="stepper")
    return config.build(dataset_info=info())


def single(**extra: Any) -> dict[str, Any]:
    return {"type": "single_module", "config": single_config(**extra)}


def multi_call(**extra: Any) -> dict[str, Any]:
    return {
        "type": "multi_call",
        "config": {
            "wrapped_step": single(**extra),
            "config": None,
            "include_multi_call_in_loss": False,
        },
    }


def data(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {
        n: MEANS[n] + STDS[n] * torch.randn(BATCH, N_TIMES, N_LAT, N_LON, generator=gen)
        for n in NAMES
    }
    out["frac"] = torch.rand(BATCH, N_TIMES, N_LAT, N_LON, generator=gen)
    return out


def rollout(stepper: Stepper, d: dict[str, torch.Tensor], n: int = 3):
    return list(
        stepper.rollout(
            initial_condition={k: d[k][:, 0] for k in stepper.prognostic_names},
            forcing={k: d[k] for k in stepper.forcing_names},
            n_forward_steps=n,
            detach_uncorrected=True,
        )
    )


def test_next_step_forcing_is_read_at_the_predicted_time():
    d = data()
    stepper = build(single(next_step_forcing_names=["sw"]))
    outputs = rollout(stepper, d)
    state = {k: d[k][:, 0] for k in ["sst", "a"]}
    for i, out in enumerate(outputs):
        inputs = {**state, "frac": d["frac"][:, i], "sw": d["sw"][:, i + 1]}
        manual = stepper.step.step(
            inputs,
            {"frac": d["frac"][:, i + 1], "sw": d["sw"][:, i + 1]},
            detach_uncorrected=True,
        )
        torch.testing.assert_close(out.output["a"], manual.output["a"])
        stale = stepper.step.step(
            {**inputs, "sw": d["sw"][:, i]}, {}, detach_uncorrected=True
        )
        assert not torch.allclose(stale.output["a"], out.output["a"])
        state = out.output


@pytest.mark.parametrize(
    "names, match",
    [(["a"], "output variable"), (["nope"], "not in in_names")],
)
def test_next_step_forcing_names_must_be_forcing(names, match):
    with pytest.raises(ConfigError, match=match):
        build(single(next_step_forcing_names=names))


@pytest.mark.parametrize("interpolate", [False, True])
def test_prescribed_ocean_takes_the_data_over_the_ocean(interpolate):
    d = data()
    ocean = {"surface_temperature_name": "sst", "ocean_fraction_name": "frac"}
    stepper = build(single(ocean={**ocean, "interpolate": interpolate}))
    free = build(single())  # same seed: the same network without the ocean
    for i, (out, raw) in enumerate(
        zip(rollout(stepper, d, 1), rollout(free, d, 1), strict=True)
    ):
        frac, sst = d["frac"][:, i + 1], d["sst"][:, i + 1]
        if interpolate:
            expected = frac * sst + (1 - frac) * raw.output["sst"]
        else:
            expected = torch.where(frac.round() == 1, sst, raw.output["sst"])
            assert (frac.round() == 1).any() and (frac.round() == 0).any()
        torch.testing.assert_close(out.output["sst"], expected)
        torch.testing.assert_close(out.output["a"], raw.output["a"])
        assert out.uncorrected == {}  # a prescription is not a correction


def test_ocean_with_a_corrector_keeps_uncorrected_exact():
    ocean = {"surface_temperature_name": "sst", "ocean_fraction_name": "frac"}
    stepper = build(single(ocean=ocean, corrector={"force_positive_names": ["a"]}))
    out = rollout(stepper, data(), 1)[0]
    assert list(out.uncorrected) == ["a"]
    torch.testing.assert_close(out.output["a"], out.uncorrected["a"].clamp(min=0))


def test_ocean_config_errors():
    ocean = {"surface_temperature_name": "sst", "ocean_fraction_name": "frac"}
    with pytest.raises(ValueError, match="also changed by the corrector"):
        build(single(ocean=ocean, corrector={"force_positive_names": ["sst"]}))
    with pytest.raises(ConfigError, match="must be in both in_names and out_names"):
        build(single(ocean={**ocean, "surface_temperature_name": "frac"}))
    with pytest.raises(ConfigError, match="not supported here: ocean.slab"):
        build(
            single(
                ocean={
                    **ocean,
                    "slab": {"mixed_layer_depth_name": "d", "q_flux_name": "q"},
                }
            )
        )


def test_multi_call_predicts_what_the_wrapped_step_predicts():
    extra = {"corrector": {"force_positive_names": ["a"]}}
    wrapped = build(multi_call(**extra), seed=3)
    plain = build(single(**extra), seed=3)
    assert isinstance(wrapped.step, MultiCallStep)
    assert isinstance(plain.step, SingleModuleStep)
    assert wrapped.step.corrector_enabled and plain.step.corrector_enabled
    assert not build(multi_call()).step.corrector_enabled
    d = data()
    for a, b in zip(rollout(wrapped, d), rollout(plain, d), strict=True):
        for name in ["sst", "a"]:
            torch.testing.assert_close(a.output[name], b.output[name])
        assert sorted(a.uncorrected) == sorted(b.uncorrected) == ["a"]
    # checkpoints round-trip with the multi_call config
    restored = Stepper.from_state(wrapped.get_state())
    assert isinstance(restored.step, MultiCallStep)
    torch.testing.assert_close(
        rollout(restored, d)[-1].output["a"], rollout(wrapped, d)[-1].output["a"]
    )


def test_assigning_the_network_of_a_multi_call_step_reaches_the_wrapped_step():
    stepper = build(multi_call())
    replacement = torch.nn.Identity()
    stepper.step.module = replacement
    assert stepper.step.module is replacement
    assert stepper.step.wrapped.module is replacement


@pytest.mark.parametrize("step", [single(), multi_call()], ids=["single", "multi_call"])
def test_corrector_loss_without_corrector_is_refused_on_both_step_types(step):
    stepper = build(step)
    config = from_dict_strict(
        TrainStepperConfig,
        {"corrector_loss": {"regularization": {"weight": 1.0}}},
        path="stepper_training",
    )
    with pytest.raises(ValueError, match="add stepper.step.config.corrector"):
        config.build(stepper)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"config": {"forcing_name": "sw"}}, "not supported here: multi_call config"),
        ({"include_multi_call_in_loss": True}, "include_multi_call_in_loss"),
        (
            {"wrapped_step": {"type": "multi_call", "config": {}}},
            "allowed types: \\['single_module'\\]",
        ),
    ],
)
def test_multi_call_config_errors(config, match):
    step = multi_call()
    step["config"] = {**step["config"], **config}
    with pytest.raises(ConfigError, match=match):
        build(step)


def test_ocean_fraction_needs_not_be_a_network_input():
    ocean = {"surface_temperature_name": "sst", "ocean_fraction_name": "frac"}
    stepper = build(
        {
            "type": "single_module",
            "config": {**single_config(ocean=ocean), "in_names": ["sst", "a", "sw"]},
        }
    )
    assert "frac" in stepper.forcing_names and "frac" in stepper.all_names
    d = data()
    out = rollout(stepper, d, 1)[0]
    ocean_points = d["frac"][:, 1].round() == 1
    assert torch.equal(out.output["sst"][ocean_points], d["sst"][:, 1][ocean_points])
