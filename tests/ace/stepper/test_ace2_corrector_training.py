"""Corrector-aware training through ACE2's full corrector on the toy atmosphere.

The gradients must flow through every operation (dry air, moisture budget,
frozen clip, energy budget, positivity): the parameter update equals an
autograd reference computed on the attached correction, and differs from the
update a detached correction would give.
"""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from fme.ace.data.ace_format_fixture import AceFormatPaths, write_ace_format_dataset
from fme.ace.data.batch import BatchData
from fme.ace.data.loader import DataLoaderConfig, build_data_loader
from fme.ace.data.netcdf_dataset import XarrayDataConfig
from fme.ace.stepper.stepper import Stepper, StepperConfig
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.core.config_loading import from_dict_strict
from fme.core.optimization import OptimizationConfig

REPO = Path(__file__).resolve().parents[3]
N_LEVELS = 4


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[AceFormatPaths, Stepper, BatchData]:
    paths = write_ace_format_dataset(
        tmp_path_factory.mktemp("toy"), n_lat=6, n_lon=12, n_levels=N_LEVELS, n_times=8
    )
    config = yaml.safe_load((REPO / "configs" / "ace_atmosphere.yaml").read_text())
    step = config["stepper"]["step"]["config"]
    dropped = {
        f"{prefix}{k}"
        for prefix in ("air_temperature_", "specific_total_water_")
        for k in range(N_LEVELS, 8)
    }

    def fewer_levels(names: list[str]) -> list[str]:
        return [n for n in names if n not in dropped]

    for key in ("in_names", "out_names"):
        step[key] = fewer_levels(step[key])
    corrector = step["corrector"]
    corrector["force_positive_names"] = fewer_levels(corrector["force_positive_names"])
    step["builder"] = {"type": "Linear1x1", "config": {}}
    step["normalization"] = {
        "network": {
            "global_means_path": str(paths.means_path),
            "global_stds_path": str(paths.stds_path),
        },
        "residual": {
            "global_means_path": str(paths.means_path),
            "global_stds_path": str(paths.residual_stds_path),
        },
    }
    stepper_config = from_dict_strict(StepperConfig, config["stepper"])
    loader = build_data_loader(
        DataLoaderConfig(
            dataset=XarrayDataConfig(data_path=str(paths.data_dir)), batch_size=2
        ),
        names=stepper_config.step.step_config.all_names,
        n_timesteps=3,
        shuffle=False,
    )
    torch.manual_seed(0)
    stepper = stepper_config.build(dataset_info=loader.dataset_info)
    return paths, stepper, next(iter(loader.loader))


def _train(stepper: Stepper, training: dict):
    return from_dict_strict(
        TrainStepperConfig, training, path="stepper_training"
    ).build(stepper)


def _sgd(stepper: Stepper, *, accumulate: bool, lr: float):
    return OptimizationConfig(
        optimizer_type="SGD", lr=lr, use_gradient_accumulation=accumulate
    ).build(stepper.step.module.parameters())


def _params(stepper: Stepper) -> list[torch.Tensor]:
    return [p.detach().clone() for p in stepper.step.module.parameters()]


def _inputs(stepper: Stepper, batch: BatchData):
    data = batch.data
    return (
        {n: data[n][:, 0] for n in stepper.prognostic_names},
        {n: data[n] for n in stepper.forcing_names},
    )


def test_regularization_gradient_through_the_full_ace2_corrector(toy):
    _, stepper, batch = toy
    stepper = copy.deepcopy(stepper)
    reference = copy.deepcopy(stepper)
    weight = 0.3
    train = _train(
        stepper,
        {
            "loss": {"type": "MSE"},
            "corrector_loss": {"regularization": {"weight": weight}},
            "loss_weight_schedules": {"main": {"type": "constant", "value": 0.0}},
        },
    )
    before = _params(stepper)
    out = train.train_on_batch(batch, _sgd(stepper, accumulate=False, lr=1.0))

    # reference: the penalty written out on the attached step output
    initial, forcing = _inputs(reference, batch)
    step_out = next(
        reference.rollout(
            initial_condition=initial,
            forcing=forcing,
            n_forward_steps=1,
            detach_uncorrected=False,
        )
    )
    stds = reference.loss_normalizer.stds
    corrected = sorted(step_out.uncorrected)
    assert {"PRESsfc", "PRATEsfc", "air_temperature_0"} <= set(corrected)
    terms = [
        (((step_out.output[n] - step_out.uncorrected[n]) / stds[n]) ** 2).mean()
        for n in corrected
    ]
    penalty = weight * torch.stack(terms).mean()
    params = list(reference.step.module.parameters())
    grads = torch.autograd.grad(penalty, params, retain_graph=True)
    assert out.metrics["corrector_regularization"] == pytest.approx(
        float(penalty.detach()), rel=1e-4
    )
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        torch.testing.assert_close(p1, p0 - g, rtol=1e-4, atol=1e-7)
    # the correction's Jacobian matters: with the correction held fixed the
    # gradient would be -(raw-side only), which differs
    detached = (
        weight
        * torch.stack(
            [
                (
                    ((step_out.output[n].detach() - step_out.uncorrected[n]) / stds[n])
                    ** 2
                ).mean()
                for n in corrected
            ]
        ).mean()
    )
    naive = torch.autograd.grad(detached, params)
    assert any(
        not torch.allclose(a, b, rtol=1e-3, atol=1e-9)
        for a, b in zip(grads, naive, strict=True)
    )


@pytest.mark.parametrize("target", ["raw", "inverse"])
def test_both_features_with_gradient_accumulation_match_reference(toy, target):
    _, stepper, batch = toy
    stepper = copy.deepcopy(stepper)
    reference = copy.deepcopy(stepper)
    training = {
        "loss": {"type": "MSE"},
        "n_forward_steps": 2,
        "corrector_loss": {
            "precorrector_optimization": {"target": target},
            "regularization": {"weight": 0.5},
        },
    }
    train = _train(stepper, training)
    before = _params(stepper)
    out = train.train_on_batch(batch, _sgd(stepper, accumulate=True, lr=0.01))
    ref_train = _train(reference, training)
    initial, forcing = _inputs(reference, batch)
    rollout = reference.rollout(
        initial_condition=initial,
        forcing=forcing,
        n_forward_steps=2,
        detach_uncorrected=False,
        detach_between_steps=True,
    )
    total = torch.zeros(())
    for i, step_out in enumerate(rollout):
        target_data = {n: batch.data[n][:, i + 1] for n in reference.out_names}
        result = ref_train.loss(step_out, target_data, step=i)
        assert out.metrics[f"loss_step_{i}"] == pytest.approx(
            float(result.main.total().detach()), rel=1e-4
        )
        total = total + result.total()
    grads = torch.autograd.grad(total, list(reference.step.module.parameters()))
    assert any(g.abs().sum() > 0 for g in grads)
    for p0, p1, g in zip(before, _params(stepper), grads, strict=True):
        torch.testing.assert_close(p1, p0 - 0.01 * g, rtol=1e-4, atol=1e-7)
    for name in ["PRESsfc", "PRATEsfc", "air_temperature_0"]:
        assert f"correction_rms/{name}" in out.metrics
