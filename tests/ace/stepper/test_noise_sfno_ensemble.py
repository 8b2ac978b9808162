"""ACE2S training: NoiseConditionedSFNO with ACE's EnsembleLoss and n_ensemble 2."""

import torch
from stepper_builders import MEANS, STDS, batch, build_train_stepper, dataset_info

from fme.ace.stepper.stepper import StepperConfig
from fme.core.config_loading import from_dict_strict
from fme.core.optimization import OptimizationConfig


def _stepper():
    torch.manual_seed(0)
    config = from_dict_strict(
        StepperConfig,
        {
            "step": {
                "type": "single_module",
                "config": {
                    "builder": {
                        "type": "NoiseConditionedSFNO",
                        "config": {
                            "embed_dim": 8,
                            "noise_embed_dim": 4,
                            "num_layers": 2,
                            "affine_norms": True,
                            "noise_type": "isotropic",
                        },
                    },
                    "in_names": ["a", "b", "f"],
                    "out_names": ["a", "b"],
                    "normalization": {"network": {"means": MEANS, "stds": STDS}},
                },
            }
        },
    )
    return config.build(dataset_info=dataset_info())


def test_ensemble_loss_with_ace_kwargs_trains_a_noise_conditioned_sfno():
    stepper = _stepper()
    train = build_train_stepper(
        stepper,
        {
            "n_ensemble": 2,
            "loss": {
                "type": "EnsembleLoss",
                "kwargs": {"crps_weight": 0.9, "energy_score_weight": 0.1},
            },
        },
    )
    data = batch(n_samples=2, n_times=2)
    optimization = OptimizationConfig(optimizer_type="Adam", lr=3e-3).build(
        stepper.module.parameters()
    )
    torch.manual_seed(1)
    first = train.validate_on_batch(data).metrics["loss"]
    for _ in range(15):
        train.train_on_batch(data, optimization)
    torch.manual_seed(1)
    last = train.validate_on_batch(data).metrics["loss"]
    assert last < first, (first, last)
    # the trained network's members differ: the noise conditions the output
    x = torch.randn(1, 3, 4, 8).expand(2, 3, 4, 8)
    with torch.no_grad():
        out = stepper.base_module(x)
    assert (out[0] - out[1]).abs().max() > 1e-4
