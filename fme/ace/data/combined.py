"""Several datasets as one: ``concat`` (more samples) and ``merge`` (more variables).

As in ACE:

- ``concat: [dataset, ...]`` appends the samples of each dataset (for
  example separate runs, or time subsets of one store); windows never cross
  from one dataset to the next. All must share one grid (``strict: false``
  compares the coordinates to 1e-4 degrees instead of exactly) and timestep.
- ``merge: [dataset, ...]`` combines variables of datasets that share their
  sample times, timestep and grid (to ACE's tolerance, ``torch.allclose``
  with rtol 1e-5 and atol 1e-8); each requested variable is read from the
  first dataset that holds it, and a later dataset holding it too is named
  in a warning (ACE accepts such merges, so they are not refused). A
  variable found in none is an error.
"""

import dataclasses
import logging
from typing import Protocol

import numpy as np
import torch

from fme.ace.data.batch import DatasetInfo
from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset
from fme.ace.data.store import TimeSeriesStore, open_data
from fme.core.tensors import TensorDict


class WindowDataset(Protocol):
    """What loaders need of a dataset of sample windows."""

    n_timesteps: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[TensorDict, np.ndarray]: ...

    @property
    def dataset_info(self) -> DatasetInfo: ...

    @property
    def sample_start_times(self) -> np.ndarray: ...

    @property
    def description(self) -> str: ...


@dataclasses.dataclass
class ConcatDatasetConfig:
    """ACE's ``dataset: {concat: [...]}``.

    Attributes:
        concat: the datasets whose samples are appended, in order.
        strict: compare the datasets' grids exactly (false: to 1e-4 degrees).
    """

    concat: list[XarrayDataConfig]
    strict: bool = True

    def __post_init__(self):
        if not self.concat:
            raise ValueError("dataset.concat must list at least one dataset")

    @property
    def description(self) -> str:
        """The concatenated datasets, for messages."""
        return "concat of " + ", ".join(c.description for c in self.concat)


@dataclasses.dataclass
class MergeDatasetConfig:
    """ACE's ``dataset: {merge: [...]}``.

    Attributes:
        merge: the datasets whose variables are combined; a variable is read
            from the first dataset that holds it.
    """

    merge: list[XarrayDataConfig | ConcatDatasetConfig]

    def __post_init__(self):
        if not self.merge:
            raise ValueError("dataset.merge must list at least one dataset")

    @property
    def description(self) -> str:
        """The merged datasets, for messages."""
        return "merge of " + ", ".join(c.description for c in self.merge)


DatasetConfig = XarrayDataConfig | ConcatDatasetConfig | MergeDatasetConfig


_EXACT = (0.0, 0.0)
_CONCAT_LOOSE = (0.0, 1e-4)  # concat strict: false, degrees
_ACE_MERGE = (1e-5, 1e-8)  # ACE's LatLonCoordinates equality (torch.allclose)


def _check_same_grid(
    first: DatasetInfo,
    other: DatasetInfo,
    *,
    first_where: str,
    where: str,
    tolerance: tuple[float, float],
) -> None:
    """Refuse ``other`` unless its grid and timestep are ``first``'s.

    ``tolerance`` is ``(rtol, atol)`` of the coordinate comparison.
    """
    rtol, atol = tolerance
    for axis in ("lat", "lon"):
        a, b = getattr(first, axis), getattr(other, axis)
        same = a.shape == b.shape and (
            torch.equal(a, b)
            if tolerance == _EXACT
            else torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)
        )
        if not same:
            largest = (
                f", up to {float((a - b).abs().max()):.3g} degrees apart"
                if a.shape == b.shape
                else ""
            )
            raise ValueError(
                f"{where} has a different {axis} grid ({b.numel()} points from "
                f"{float(b[0]):.4g}) than {first_where} ({a.numel()} points from "
                f"{float(a[0]):.4g}{largest}); all combined datasets need one grid: "
                "regrid one of them or combine only datasets on the same grid"
            )
    if first.timestep != other.timestep:
        raise ValueError(
            f"{where} has timestep {other.timestep}, {first_where} "
            f"{first.timestep}; all combined datasets need one timestep"
        )


class ConcatDataset(torch.utils.data.Dataset):
    """The samples of several datasets, one after the other.

    Args:
        datasets: datasets with equal ``n_timesteps``, grid and timestep.
        strict: compare grids exactly (else to 1e-4 degrees).
    """

    def __init__(self, datasets: list[WindowDataset], *, strict: bool = True):
        self.datasets = datasets
        self.n_timesteps = datasets[0].n_timesteps
        first = datasets[0].dataset_info
        for dataset in datasets[1:]:
            _check_same_grid(
                first,
                dataset.dataset_info,
                first_where=datasets[0].description,
                where=dataset.description,
                tolerance=_EXACT if strict else _CONCAT_LOOSE,
            )
        self._offsets = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> tuple[TensorDict, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} is outside 0..{len(self) - 1}")
        which = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return self.datasets[which][index - int(self._offsets[which])]

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid, timestep and metadata of the first dataset."""
        return self.datasets[0].dataset_info

    @property
    def sample_start_times(self) -> np.ndarray:
        """First time of every sample, datasets in order."""
        return np.concatenate([d.sample_start_times for d in self.datasets])

    @property
    def description(self) -> str:
        """The concatenated datasets, for messages."""
        return "concat of " + ", ".join(d.description for d in self.datasets)


class MergedDataset(torch.utils.data.Dataset):
    """Variables of several datasets with the same samples, side by side.

    Args:
        datasets: datasets with equal sample start times, grid and timestep
            and disjoint variables.
    """

    def __init__(self, datasets: list[WindowDataset]):
        self.datasets = datasets
        self.n_timesteps = datasets[0].n_timesteps
        first = datasets[0]
        for dataset in datasets[1:]:
            _check_same_grid(
                first.dataset_info,
                dataset.dataset_info,
                first_where=first.description,
                where=dataset.description,
                tolerance=_ACE_MERGE,
            )
            if not np.array_equal(dataset.sample_start_times, first.sample_start_times):
                raise ValueError(
                    f"{dataset.description} has {len(dataset)} samples starting "
                    f"{_span(dataset.sample_start_times)}, but {first.description} "
                    f"has {len(first)} starting {_span(first.sample_start_times)}; "
                    "merged datasets need the same times (use the same subset)"
                )

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, index: int) -> tuple[TensorDict, np.ndarray]:
        data: TensorDict = {}
        times = None
        for dataset in self.datasets:
            part, part_times = dataset[index]
            data.update(part)
            times = part_times if times is None else times
        assert times is not None
        return data, times

    def read_times(self, start: int, n_times: int) -> tuple[TensorDict, np.ndarray]:
        """``n_times`` consecutive axis times from ``start``, from every dataset."""
        data: TensorDict = {}
        times = None
        for dataset in self.datasets:
            part, part_times = dataset.read_times(start, n_times)  # type: ignore[attr-defined]
            data.update(part)
            times = part_times if times is None else times
        assert times is not None
        return data, times

    def check_range(self, start: int, n_times: int) -> None:
        """Raise unless every merged dataset can read the range."""
        for dataset in self.datasets:
            dataset.check_range(start, n_times)  # type: ignore[attr-defined]

    @property
    def all_times(self) -> np.ndarray:
        """Times of the first dataset's axis."""
        return self.datasets[0].all_times  # type: ignore[attr-defined]

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid and timestep of the first dataset, metadata of all."""
        info = self.datasets[0].dataset_info
        metadata = dict(info.variable_metadata)
        vertical = info.vertical_coordinate
        for dataset in self.datasets[1:]:
            other = dataset.dataset_info
            metadata.update(other.variable_metadata)
            vertical = vertical if vertical is not None else other.vertical_coordinate
        return dataclasses.replace(
            info, variable_metadata=metadata, vertical_coordinate=vertical
        )

    @property
    def sample_start_times(self) -> np.ndarray:
        """First time of every sample."""
        return self.datasets[0].sample_start_times

    @property
    def description(self) -> str:
        """The merged datasets, for messages."""
        return "merge of " + ", ".join(d.description for d in self.datasets)


def _span(times: np.ndarray) -> str:
    if len(times) == 0:
        return "nowhere"
    return f"{times[0]} .. {times[-1]}"


def _available_names(config: XarrayDataConfig | ConcatDatasetConfig) -> set[str]:
    """Variables of a dataset, read from its first file."""
    first = config.concat[0] if isinstance(config, ConcatDatasetConfig) else config
    paths = TimeSeriesStore.paths(first.data_path, first.file_pattern)
    engine = "zarr" if first.engine == "zarr" else None
    with open_data(paths[0], engine) as ds:
        return {str(v) for v in ds.data_vars}


def _split_names(config: MergeDatasetConfig, names: list[str]) -> list[list[str]]:
    """Each requested name goes to the first merged dataset holding it."""
    remaining = list(names)
    per_dataset = []
    holder: dict[str, str] = {}
    for sub in config.merge:
        available = _available_names(sub)
        again = sorted(n for n in set(names) & available if n in holder)
        if again:
            first_holders = sorted({holder[n] for n in again})
            logging.warning(
                "merge: %s also holds %s; they are read from %s, the first "
                "dataset holding them (as in ACE)",
                sub.description,
                again,
                ", ".join(first_holders),
            )
        for name in available:
            holder.setdefault(name, sub.description)
        mine = [n for n in remaining if n in available]
        per_dataset.append(mine)
        remaining = [n for n in remaining if n not in available]
    if remaining:
        raise ValueError(
            f"variables {remaining} are in none of the merged datasets "
            f"({config.description}); fix the names or add the dataset holding them"
        )
    return per_dataset


def build_dataset(
    config: DatasetConfig, *, names: list[str], n_timesteps: int
) -> WindowDataset:
    """The dataset ``config`` describes, reading ``names`` in windows of ``n_timesteps``."""
    if isinstance(config, XarrayDataConfig):
        return XarrayDataset(config, names=names, n_timesteps=n_timesteps)
    if isinstance(config, ConcatDatasetConfig):
        return ConcatDataset(
            [
                XarrayDataset(c, names=names, n_timesteps=n_timesteps)
                for c in config.concat
            ],
            strict=config.strict,
        )
    parts = []
    for sub, sub_names in zip(config.merge, _split_names(config, names), strict=True):
        if not sub_names:
            logging.info("merge: %s provides none of the variables", sub.description)
            continue
        parts.append(build_dataset(sub, names=sub_names, n_timesteps=n_timesteps))
    return MergedDataset(parts)
