"""Initial conditions and target windows for inference rollouts."""

import dataclasses

import numpy as np
import torch

from fme.ace.data.batch import BatchData, DatasetInfo
from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset


@dataclasses.dataclass
class StartIndices:
    """ACE's ``start_indices``: which windows start a rollout.

    Attributes:
        first: index of the first initial condition.
        n_initial_conditions: number of rollouts.
        interval: windows between consecutive initial conditions.
    """

    first: int = 0
    n_initial_conditions: int = 1
    interval: int = 1

    def __post_init__(self):
        if self.first < 0 or self.n_initial_conditions < 1 or self.interval < 1:
            raise ValueError(
                "start_indices needs first >= 0, n_initial_conditions >= 1 and "
                f"interval >= 1, got {self}"
            )

    def as_indices(self) -> list[int]:
        """The window indices of the initial conditions."""
        return [
            self.first + i * self.interval for i in range(self.n_initial_conditions)
        ]


@dataclasses.dataclass
class InferenceDataLoaderConfig:
    """ACE's inference ``loader``: a dataset and where rollouts start.

    Attributes:
        dataset: the netCDF data.
        start_indices: the initial conditions.
    """

    dataset: XarrayDataConfig
    start_indices: StartIndices = dataclasses.field(default_factory=StartIndices)


class InferenceData:
    """Windows of ``n_forward_steps + 1`` times starting at the initial conditions.

    Args:
        config: the loader config.
        names: variables to read.
        n_forward_steps: rollout length.
        rank: this process's rank; rollouts are split across ranks.
        world_size: number of processes.
    """

    def __init__(
        self,
        config: InferenceDataLoaderConfig,
        *,
        names: list[str],
        n_forward_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.dataset = XarrayDataset(
            config.dataset, names=names, n_timesteps=n_forward_steps + 1
        )
        indices = config.start_indices.as_indices()
        n_windows = len(self.dataset)
        too_late = [i for i in indices if i >= n_windows]
        if too_late:
            raise ValueError(
                f"start_indices {too_late} are past the last window with "
                f"{n_forward_steps} forward steps (there are {n_windows} windows in "
                f"{config.dataset.data_path}); lower n_initial_conditions, interval "
                "or n_forward_steps"
            )
        self.all_indices = indices
        self.indices = indices[rank::world_size]
        self.sample_offset = rank

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid and metadata of the data."""
        return self.dataset.dataset_info

    @property
    def n_samples(self) -> int:
        """Rollouts over all ranks."""
        return len(self.all_indices)

    def batch(self) -> BatchData | None:
        """This rank's rollouts as one batch, or None if it has none."""
        if not self.indices:
            return None
        items = [self.dataset[i] for i in self.indices]
        names = items[0][0].keys()
        data = {n: torch.stack([item[0][n] for item in items]) for n in names}
        time = np.stack([item[1] for item in items])
        return BatchData(data=data, time=time)
