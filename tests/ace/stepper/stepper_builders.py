"""Small explicit builders of steppers and batches for stepper tests."""

import datetime
from typing import Any

import numpy as np
import torch

from fme.ace.data.batch import BatchData, DatasetInfo
from fme.ace.stepper.stepper import Stepper, StepperConfig
from fme.ace.stepper.train_stepper import TrainStepper, TrainStepperConfig
from fme.core.config_loading import from_dict_strict

N_LAT, N_LON = 4, 8
NAMES = ["a", "b", "f"]  # a, b prognostic; f forcing
MEANS = {"a": 1.0, "b": -2.0, "f": 0.5}
STDS = {"a": 2.0, "b": 0.5, "f": 1.5}


def dataset_info() -> DatasetInfo:
    return DatasetInfo(
        lat=torch.linspace(-60.0, 60.0, N_LAT),
        lon=torch.arange(N_LON) * 360.0 / N_LON,
        timestep=datetime.timedelta(hours=6),
    )


def stepper_config(
    *,
    corrector: dict[str, Any] | None = None,
    builder: str = "Linear1x1",
    residual_prediction: bool = False,
) -> StepperConfig:
    step_config: dict[str, Any] = {
        "builder": {"type": builder, "config": {}},
        "in_names": ["a", "b", "f"],
        "out_names": ["a", "b"],
        "normalization": {"network": {"means": MEANS, "stds": STDS}},
        "residual_prediction": residual_prediction,
    }
    if corrector is not None:
        step_config["corrector"] = {"type": "atmosphere_corrector", "config": corrector}
    return from_dict_strict(
        StepperConfig, {"step": {"type": "single_module", "config": step_config}}
    )


def build_stepper(seed: int = 0, **kwargs: Any) -> Stepper:
    torch.manual_seed(seed)
    return stepper_config(**kwargs).build(dataset_info=dataset_info())


def build_train_stepper(
    stepper: Stepper, training: dict[str, Any] | None = None
) -> TrainStepper:
    config = from_dict_strict(
        TrainStepperConfig, training or {}, path="stepper_training"
    )
    return config.build(stepper)


def batch(n_samples: int = 2, n_times: int = 3, seed: int = 1) -> BatchData:
    generator = torch.Generator().manual_seed(seed)
    data = {
        n: MEANS[n]
        + STDS[n] * torch.randn(n_samples, n_times, N_LAT, N_LON, generator=generator)
        for n in NAMES
    }
    time = np.array(
        [
            [
                np.datetime64("2000-01-01T00") + np.timedelta64(6 * t, "h")
                for t in range(n_times)
            ]
            for _ in range(n_samples)
        ]
    )
    return BatchData(data=data, time=time)
