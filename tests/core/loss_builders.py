"""Small builders shared by the loss tests: names, statistics, grid, data."""

import numpy as np
import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.loss import StepLossConfig
from fme.core.normalizer import StandardNormalizer

NAMES = ["a", "b_0", "b_1"]
MEANS = {"a": 1.0, "b_0": -2.0, "b_1": 0.5}
STDS = {"a": 2.0, "b_0": 0.5, "b_1": 4.0}
B, H, W = 2, 3, 4


def make_normalizer() -> StandardNormalizer:
    return StandardNormalizer(
        means={k: torch.tensor(v) for k, v in MEANS.items()},
        stds={k: torch.tensor(v) for k, v in STDS.items()},
    )


def make_ops() -> LatLonOperations:
    return LatLonOperations.from_latitudes(torch.tensor([-60.0, 0.0, 45.0]), W)


def cos_area() -> np.ndarray:
    lat = np.deg2rad(np.array([-60.0, 0.0, 45.0]))
    return np.repeat(np.cos(lat)[:, None], W, axis=1)


def random_data(seed: int, *shape: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*shape, generator=gen, dtype=torch.float64) for n in NAMES}


def normalized(x: dict[str, torch.Tensor], name: str) -> np.ndarray:
    return (x[name].numpy() - MEANS[name]) / STDS[name]


def build(**config) -> object:
    return StepLossConfig(**config).build(
        out_names=NAMES, normalizer=make_normalizer(), gridded_ops=make_ops()
    )
