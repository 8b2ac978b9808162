"""Splitting a batch does not change ACE2's corrector-aware training step.

Data-parallel training is exact only if no sample's loss or gradient depends
on the other samples of its batch: every corrector operation, the dry-air
reference and every loss term must be per-sample means that average over
ranks. Here, in one process and without any distributed machinery, a batch of
4 windows of the toy atmosphere goes through ACE2's full corrector (dry air,
moisture and energy budgets, frozen clip, positivity, prescribed ocean,
next-step forcing) with both corrector-loss features and gradient
accumulation, and is compared with its two halves of 2: the corrected and
uncorrected outputs must be the same per sample, and the SGD update of the
whole batch must be the mean of the halves' updates.
"""

import copy
from pathlib import Path

import pytest
import torch

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.batch import BatchData
from fme.ace.data.loader import build_data_loader
from fme.ace.stepper.stepper import Stepper
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.ace.train.config import load_train_config
from fme.core.optimization import OptimizationConfig

REPO = Path(__file__).resolve().parents[3]
STEP = "stepper.step.config"


@pytest.fixture(scope="module")
def ace2(tmp_path_factory) -> tuple[Stepper, TrainStepperConfig, BatchData]:
    root = tmp_path_factory.mktemp("ace2_split")
    paths = write_ace_format_dataset(
        root / "ace", n_lat=8, n_lon=16, n_levels=8, n_times=20
    )
    config = load_train_config(
        REPO / "configs" / "ace_atmosphere.yaml",
        [
            f"experiment_dir={root / 'run'}",
            f"train_loader.dataset.data_path={paths.data_dir}",
            "train_loader.dataset.subset={stop: 12}",
            f"validation.loader.dataset.data_path={paths.data_dir}",
            f"{STEP}.normalization.network.global_means_path={paths.means_path}",
            f"{STEP}.normalization.network.global_stds_path={paths.stds_path}",
            f"{STEP}.normalization.residual.global_means_path={paths.means_path}",
            f"{STEP}.normalization.residual.global_stds_path="
            f"{paths.residual_stds_path}",
            f"{STEP}.builder.config.embed_dim=8",
            "stepper_training.corrector_loss={precorrector_optimization: {}, "
            "regularization: {weight: 0.5}}",
        ],
    )
    assert config.optimization.use_gradient_accumulation
    assert config.train_loader.batch_size == 4
    data = build_data_loader(
        config.train_loader,
        names=config.stepper.step.step_config.all_names,
        n_timesteps=config.stepper_training.n_forward_steps + 1,
        shuffle=False,
    )
    torch.manual_seed(0)
    stepper = config.stepper.build(dataset_info=data.dataset_info)
    return stepper, config.stepper_training, next(iter(data.loader))


def _outputs(stepper: Stepper, batch: BatchData) -> list:
    data = batch.data
    with torch.no_grad():
        return list(
            stepper.rollout(
                initial_condition={n: data[n][:, 0] for n in stepper.prognostic_names},
                forcing={n: data[n] for n in stepper.forcing_names},
                n_forward_steps=2,
                detach_uncorrected=True,
            )
        )


def _close(
    actual: torch.Tensor, expected: torch.Tensor, what: str, scale: float | None = None
) -> None:
    """Equal to float32 rounding, relative to ``scale`` (default: largest value)."""
    scale = float(expected.abs().max()) if scale is None else scale
    torch.testing.assert_close(
        actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{what}: {m}"
    )


def test_corrected_outputs_are_per_sample(ace2):
    stepper, _, batch = ace2
    whole = _outputs(stepper, batch)
    halves = [_outputs(stepper, batch.select_samples(i, i + 2)) for i in (0, 2)]
    for i, out in enumerate(whole):
        assert {"PRESsfc", "air_temperature_0", "PRATEsfc"} <= set(out.uncorrected)
        for field in ("output", "uncorrected"):
            for name, value in getattr(out, field).items():
                split = torch.cat([getattr(h[i], field)[name] for h in halves])
                _close(split, value, f"step {i} {field} {name}")


def _sgd_update(stepper: Stepper, training: TrainStepperConfig, batch: BatchData):
    stepper = copy.deepcopy(stepper)
    train = training.build(stepper)
    before = [p.detach().clone() for p in stepper.module.parameters()]
    optimization = OptimizationConfig(
        optimizer_type="SGD", lr=1.0, use_gradient_accumulation=True
    ).build(stepper.module.parameters())
    out = train.train_on_batch(batch, optimization)
    after = stepper.module.parameters()
    return [b - a.detach() for b, a in zip(before, after, strict=True)], out.metrics


def test_update_of_the_batch_is_the_mean_of_its_halves(ace2):
    stepper, training, batch = ace2
    whole, metrics = _sgd_update(stepper, training, batch)
    halves = [
        _sgd_update(stepper, training, batch.select_samples(i, i + 2)) for i in (0, 2)
    ]
    assert metrics["corrector_regularization"] > 0
    for key in ("loss", "corrector_regularization"):
        mean = (halves[0][1][key] + halves[1][1][key]) / 2
        assert mean == pytest.approx(metrics[key], rel=1e-6), key
    names = [n for n, _ in stepper.module.named_parameters()]
    # A bias followed by a normalisation has a zero gradient up to rounding,
    # so updates are compared on the scale of the largest one.
    largest = max(float(g.abs().max()) for g in whole)
    assert largest > 0
    for name, g, g0, g1 in zip(names, whole, halves[0][0], halves[1][0], strict=True):
        _close((g0 + g1) / 2, g, name, scale=largest)
