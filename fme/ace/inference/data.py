"""Initial conditions and data windows for inference rollouts (ACE's inference loader).

A rollout of ``n_forward_steps`` from axis time ``t0`` needs the data at times
``t0 .. t0 + n_forward_steps``. They are read in chunks of
``forward_steps_in_memory`` steps (each chunk with the time before it, which
holds the forcing of its first step), so memory does not grow with the
rollout length. ``start_indices`` index the dataset's time axis, as in ACE.
With ``num_data_workers > 0`` the chunks are read by that many worker
processes of a torch ``DataLoader`` (as ACE's inference loader does), ahead of
the rollout, in order.
"""

import builtins
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from fme.ace.data.batch import BatchData, DatasetInfo
from fme.ace.data.combined import MergedDataset
from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset
from fme.core.tensors import TensorDict


def _fmt(time: np.datetime64) -> str:
    return str(np.asarray(time).astype("datetime64[s]"))


@dataclasses.dataclass
class StartIndices:
    """ACE's ``start_indices: {first, n_initial_conditions, interval}``.

    Attributes:
        first: time index of the first initial condition.
        n_initial_conditions: number of rollouts.
        interval: time steps between consecutive initial conditions.
    """

    first: int = 0
    n_initial_conditions: int = 1
    interval: int = 1

    def __post_init__(self):
        if self.first < 0 or self.n_initial_conditions < 1 or self.interval < 0:
            raise ValueError(
                "start_indices needs first >= 0, n_initial_conditions >= 1 and "
                f"interval >= 0, got {self}"
            )

    def as_indices(self, times: np.ndarray) -> list[int]:
        """The time indices of the initial conditions."""
        return [
            self.first + i * self.interval for i in range(self.n_initial_conditions)
        ]


@dataclasses.dataclass
class TimestampList:
    """ACE's ``start_indices: {times: [...]}``: rollouts start at these times.

    Attributes:
        times: times of the initial conditions, e.g. ``'1996-01-01T00:00:00'``.
        timestamp_format: ``strptime`` format of ``times``.
    """

    times: list[str]
    timestamp_format: str = "%Y-%m-%dT%H:%M:%S"

    def __post_init__(self):
        if not self.times:
            raise ValueError("start_indices.times must list at least one time")
        for value in self.times:
            try:
                pd.to_datetime(value, format=self.timestamp_format)
            except ValueError:
                raise ValueError(
                    f"start_indices.times entry {value!r} does not match "
                    f"timestamp_format {self.timestamp_format!r}"
                ) from None

    def as_indices(self, times: np.ndarray) -> list[int]:
        """The time indices of ``times`` on the axis ``times``.

        Raises:
            ValueError: naming the times that are not on the axis.
        """
        wanted = [
            np.datetime64(pd.to_datetime(t, format=self.timestamp_format), "ns")
            for t in self.times
        ]
        positions = {t: i for i, t in enumerate(times.astype("datetime64[ns]"))}
        missing = [
            s for s, t in zip(self.times, wanted, strict=True) if t not in positions
        ]
        if missing:
            raise ValueError(
                f"start_indices.times {missing} are not times of the data, which "
                f"hold {len(times)} times from {_fmt(times[0])} to {_fmt(times[-1])} "
                "; pick times on the data's time axis"
            )
        return [positions[t] for t in wanted]


@dataclasses.dataclass
class ExplicitIndices:
    """ACE's ``start_indices: {list: [...]}``: explicit time indices.

    Attributes:
        list: time indices of the initial conditions.
    """

    list: Sequence[int]

    def __post_init__(self):
        if not self.list or min(self.list) < 0:
            raise ValueError(
                f"start_indices.list must hold indices >= 0, got {self.list}"
            )

    def as_indices(self, times: np.ndarray) -> "builtins.list[int]":
        """The given indices."""
        return [int(i) for i in self.list]


class StartIndicesLike(Protocol):
    """Anything that turns a time axis into start indices."""

    def as_indices(self, times: np.ndarray) -> list[int]: ...


@dataclasses.dataclass
class MergeNoConcatDatasetConfig:
    """ACE's inference ``dataset: {merge: [...]}`` of single datasets.

    Attributes:
        merge: datasets whose variables are combined (first holder wins).
    """

    merge: list[XarrayDataConfig]

    def __post_init__(self):
        if not self.merge:
            raise ValueError("dataset.merge must list at least one dataset")


def _check_not_subset(dataset: XarrayDataConfig | MergeNoConcatDatasetConfig) -> None:
    configs = (
        dataset.merge if isinstance(dataset, MergeNoConcatDatasetConfig) else [dataset]
    )
    for config in configs:
        if not config.subset.is_everything:
            raise ValueError(
                f"inference data {config.description} may not have a subset (as in "
                "ACE); choose where rollouts start with start_indices"
            )


def _refuse(name: str, value: object) -> None:
    if value is not None:
        raise ValueError(f"not supported here: {name}; remove the key")


@dataclasses.dataclass
class InferenceDataLoaderConfig:
    """ACE's inference / evaluator ``loader``: a dataset and where rollouts start.

    Attributes:
        dataset: one dataset or ``merge: [...]`` of datasets (no subset).
        start_indices: ``{first, n_initial_conditions, interval}``,
            ``{times: [...]}`` or ``{list: [...]}``: time indices (or times) of
            the initial conditions on the dataset's time axis.
        num_data_workers: worker processes reading the chunks of lead times
            ahead of the rollout (0: the main process reads each chunk when
            it is needed).
        perturbations: not supported here (must be null).
        persistence_names: not supported here (must be null).
    """

    dataset: XarrayDataConfig | MergeNoConcatDatasetConfig
    start_indices: StartIndices | TimestampList | ExplicitIndices = dataclasses.field(
        default_factory=StartIndices
    )
    num_data_workers: int = 0
    perturbations: dict | None = None
    persistence_names: list[str] | None = None

    def __post_init__(self):
        _check_not_subset(self.dataset)
        if self.num_data_workers < 0:
            raise ValueError(
                f"num_data_workers must be >= 0, got {self.num_data_workers}"
            )
        _refuse("loader.perturbations", self.perturbations)
        _refuse("loader.persistence_names", self.persistence_names)


@dataclasses.dataclass
class ForcingDataLoaderConfig:
    """ACE's inference ``forcing_loader``: forcing data for a run without target.

    Attributes:
        dataset: one dataset or ``merge: [...]`` (no subset).
        num_data_workers: worker processes reading the forcing chunks ahead
            of the rollout (0: the main process reads them).
        perturbations: not supported here (must be null).
        persistence_names: not supported here (must be null).
    """

    dataset: XarrayDataConfig | MergeNoConcatDatasetConfig
    num_data_workers: int = 0
    perturbations: dict | None = None
    persistence_names: list[str] | None = None

    def __post_init__(self):
        _check_not_subset(self.dataset)
        if self.num_data_workers < 0:
            raise ValueError(
                f"forcing_loader.num_data_workers must be >= 0, got "
                f"{self.num_data_workers}"
            )
        _refuse("forcing_loader.perturbations", self.perturbations)
        _refuse("forcing_loader.persistence_names", self.persistence_names)


class TimeAxisDataset(Protocol):
    """A dataset that reads any range of its time axis."""

    def read_times(self, start: int, n_times: int) -> tuple[TensorDict, np.ndarray]: ...

    def check_range(self, start: int, n_times: int) -> None: ...

    @property
    def all_times(self) -> np.ndarray: ...

    @property
    def dataset_info(self) -> DatasetInfo: ...


def build_time_axis_dataset(
    config: XarrayDataConfig | MergeNoConcatDatasetConfig, *, names: list[str]
) -> TimeAxisDataset:
    """The dataset of an inference loader, reading ``names``.

    Reads always stream (no in-memory cache): a rollout reads each time once,
    and memory stays bounded by ``forward_steps_in_memory`` however long the
    run.
    """
    from fme.ace.data.combined import MergeDatasetConfig, build_dataset

    if isinstance(config, XarrayDataConfig):
        streamed = dataclasses.replace(config, cache_in_memory=False)
        return XarrayDataset(streamed, names=names, n_timesteps=1)
    merge = [dataclasses.replace(c, cache_in_memory=False) for c in config.merge]
    merged = build_dataset(
        MergeDatasetConfig(merge=list(merge)), names=names, n_timesteps=1
    )
    assert isinstance(merged, MergedDataset)
    return merged


def _description(config: XarrayDataConfig | MergeNoConcatDatasetConfig) -> str:
    if isinstance(config, XarrayDataConfig):
        return config.description
    return "merge of " + ", ".join(c.description for c in config.merge)


class InferenceData:
    """Chunks of data windows for rollouts starting at the initial conditions.

    Args:
        dataset: the dataset config (single or merged).
        start_indices: where rollouts start.
        names: variables to read.
        n_forward_steps: rollout length.
        rank: this process's rank; rollouts are split across ranks.
        world_size: number of processes.
        num_data_workers: worker processes reading chunks ahead (``windows``).

    Raises:
        ValueError: when a rollout would start outside the data or run past
            its end, naming the start, the data and the fix.
    """

    def __init__(
        self,
        dataset: XarrayDataConfig | MergeNoConcatDatasetConfig,
        *,
        start_indices: "StartIndicesLike",
        names: list[str],
        n_forward_steps: int,
        rank: int = 0,
        world_size: int = 1,
        num_data_workers: int = 0,
    ):
        if num_data_workers < 0:
            raise ValueError(f"num_data_workers must be >= 0, got {num_data_workers}")
        self.num_data_workers = num_data_workers
        self.dataset = build_time_axis_dataset(dataset, names=names)
        times = self.dataset.all_times
        indices = start_indices.as_indices(times)
        n_times = len(times)
        bad = [i for i in indices if i + n_forward_steps >= n_times]
        if bad:
            raise ValueError(
                f"rollouts of {n_forward_steps} steps from time indices {bad} run "
                f"past the end of {_description(dataset)} ({n_times} times, "
                f"{_fmt(times[0])} .. {_fmt(times[-1])}); lower n_forward_steps, start earlier "
                "or add data"
            )
        for i in indices:
            self.dataset.check_range(i, n_forward_steps + 1)
        self.n_forward_steps = n_forward_steps
        self.all_indices = indices
        self.indices = indices[rank::world_size]
        self.sample_offset = rank
        self.world_size = world_size

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid and metadata of the data."""
        return self.dataset.dataset_info

    @property
    def n_samples(self) -> int:
        """Rollouts over all ranks."""
        return len(self.all_indices)

    @property
    def initial_times(self) -> np.ndarray:
        """``datetime64[ns]`` start time of this rank's rollouts."""
        return self.dataset.all_times[self.indices]

    def window(self, first_time: int, n_times: int) -> BatchData | None:
        """Times ``first_time .. first_time + n_times - 1`` after each start.

        ``first_time = 0`` is the initial condition. Returns ``[n_local, n_times,
        lat, lon]`` data, or None when this rank has no rollouts.
        """
        if not self.indices:
            return None
        if first_time < 0 or first_time + n_times - 1 > self.n_forward_steps:
            raise ValueError(
                f"times {first_time}..{first_time + n_times - 1} are outside the "
                f"rollout's 0..{self.n_forward_steps}"
            )
        items = [self.dataset.read_times(i + first_time, n_times) for i in self.indices]
        names = items[0][0].keys()
        data = {n: torch.stack([item[0][n] for item in items]) for n in names}
        time = np.stack([item[1] for item in items])
        return BatchData(data=data, time=time)

    def windows(self, ranges: Sequence[tuple[int, int]]) -> Iterator[BatchData]:
        """``window(first_time, n_times)`` of every range, in order.

        With ``num_data_workers > 0`` worker processes (forkserver, as ACE
        uses for zarr) read them ahead (each worker up to two ranges ahead,
        torch's default); nothing is yielded when this rank has no rollouts.
        """
        if not self.indices:
            return
        if self.num_data_workers == 0 or len(ranges) == 0:
            for first_time, n_times in ranges:
                window = self.window(first_time, n_times)
                assert window is not None
                yield window
            return
        loader = DataLoader(
            _Windows(self, list(ranges)),
            batch_size=None,
            shuffle=False,
            num_workers=min(self.num_data_workers, len(ranges)),
            # a fresh server process, not a fork of this one: this process
            # has netCDF (HDF5) files open, which a forked child must not
            # share; the dataset is pickled without its handles
            multiprocessing_context="forkserver",
            collate_fn=_as_read,  # type: ignore[arg-type]  # batch_size=None: one item
        )
        yield from loader

    def batch(self) -> BatchData | None:
        """The whole rollout window (``n_forward_steps + 1`` times) at once."""
        return self.window(0, self.n_forward_steps + 1)


class _Windows(Dataset):
    """The windows of ``ranges`` as a map-style dataset (read in workers)."""

    def __init__(self, data: InferenceData, ranges: list[tuple[int, int]]):
        self._data = data
        self._ranges = ranges

    def __len__(self) -> int:
        return len(self._ranges)

    def __getitem__(self, index: int) -> BatchData:
        window = self._data.window(*self._ranges[index])
        assert window is not None
        return window


def _as_read(window: BatchData) -> BatchData:
    return window
