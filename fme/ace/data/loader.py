"""Data loaders for data-parallel training that can resume mid-epoch.

Every process builds the same permutation of the samples (seeded with
``seed + epoch``) and cuts it into *global* batches of ``batch_size``; rank
``r`` of ``W`` takes the ``r``-th contiguous share of each global batch. So
``W`` processes together see exactly the batches one process would, in the
same order, and a resumed run skips exactly the batches already trained on.
"""

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from fme.ace.data.batch import BatchData, DatasetInfo
from fme.ace.data.combined import (
    ConcatDatasetConfig,
    MergeDatasetConfig,
    build_dataset,
)
from fme.ace.data.netcdf_dataset import XarrayDataConfig
from fme.core.tensors import TensorDict


@dataclasses.dataclass
class DataLoaderConfig:
    """ACE's ``train_loader`` / ``validation_loader`` block.

    Attributes:
        dataset: one dataset (``data_path``, ...), ``concat: [...]`` of datasets
            (more samples) or ``merge: [...]`` (more variables).
        batch_size: the global batch size, summed over all processes; it must
            be divisible by the number of processes.
        num_data_workers: worker processes reading data (0 reads in the main
            process).
        prefetch_factor: batches each worker reads ahead (with workers only,
            as in ACE, where torch refuses it without workers; torch's default
            when null).
    """

    dataset: XarrayDataConfig | ConcatDatasetConfig | MergeDatasetConfig
    batch_size: int
    num_data_workers: int = 0
    prefetch_factor: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_data_workers < 0:
            raise ValueError(
                f"num_data_workers must be >= 0, got {self.num_data_workers}"
            )
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise ValueError(
                f"prefetch_factor must be >= 1 or null, got {self.prefetch_factor}"
            )
        if self.prefetch_factor is not None and self.num_data_workers == 0:
            raise ValueError(
                f"prefetch_factor {self.prefetch_factor} needs data workers, but "
                "num_data_workers is 0 (the main process reads each batch when "
                "it is needed; nothing is read ahead): set num_data_workers >= 1 "
                "or prefetch_factor: null"
            )


class WindowBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch, resumable mid-epoch.

    Global batch ``b`` is ``permutation[b * G:(b + 1) * G]``; rank ``r`` takes
    its ``[r * G / W:(r + 1) * G / W]`` part. ``batches_done`` counts the global
    batches handed out in the current epoch; after ``load_state_dict`` the next
    iteration starts behind them. A new iteration over a finished epoch starts
    that epoch again from its first batch.

    Args:
        n_samples: number of samples in the dataset.
        global_batch_size: samples per global batch (all ranks together).
        rank: this process's rank.
        world_size: number of processes.
        shuffle: permute the samples (seeded by ``seed + epoch``) or keep order.
        seed: base seed of the permutation; must be equal on all ranks.
        drop_last: drop the final incomplete global batch. Without dropping, it
            is split into near-equal contiguous shares, and a rank whose share
            is empty skips it.
    """

    def __init__(
        self,
        n_samples: int,
        *,
        global_batch_size: int,
        rank: int,
        world_size: int,
        shuffle: bool,
        seed: int,
        drop_last: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size), got rank={rank}, "
                f"world_size={world_size}"
            )
        if global_batch_size < 1 or global_batch_size % world_size != 0:
            raise ValueError(
                f"batch_size={global_batch_size} is the global batch size and must "
                f"be a positive multiple of the number of processes ({world_size}); "
                f"choose e.g. {world_size * max(1, global_batch_size // world_size)}"
            )
        self.n_samples = n_samples
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.batches_done = 0

    @property
    def n_batches(self) -> int:
        """Global batches per epoch."""
        if self.drop_last:
            return self.n_samples // self.global_batch_size
        return -(-self.n_samples // self.global_batch_size)

    def __len__(self) -> int:
        return self.n_batches

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch``; a different epoch starts from batch 0.

        Setting the epoch a loaded state is in keeps its position, so
        ``load_state_dict(state); set_epoch(state["epoch"])`` resumes.
        """
        if epoch != self.epoch:
            self.batches_done = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Position for checkpoints: ``{"epoch", "batches_done"}``."""
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state``; the next iteration skips the done batches."""
        if not 0 <= state["batches_done"] <= self.n_batches:
            raise ValueError(
                f"batches_done={state['batches_done']} is outside [0, {self.n_batches}]"
                "; the checkpoint was made with a different dataset or batch size"
            )
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])

    def global_batch(self, batch_index: int) -> list[int]:
        """All ranks' indices of global batch ``batch_index`` of this epoch."""
        size = self.global_batch_size
        return self._permutation()[batch_index * size : (batch_index + 1) * size]

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n_samples, generator=generator).tolist()

    def _local_share(self, batch: list[int]) -> list[int]:
        if len(batch) == self.global_batch_size:
            local = self.global_batch_size // self.world_size
            return batch[self.rank * local : (self.rank + 1) * local]
        shares = np.array_split(np.arange(len(batch)), self.world_size)
        return [batch[i] for i in shares[self.rank]]

    def __iter__(self) -> Iterator[list[int]]:
        if self.batches_done >= self.n_batches:
            self.batches_done = 0
        permutation = self._permutation()
        size = self.global_batch_size
        for b in range(self.batches_done, self.n_batches):
            local = self._local_share(permutation[b * size : (b + 1) * size])
            self.batches_done = b + 1
            if local:
                yield local


def collate_windows(samples: list[tuple[TensorDict, np.ndarray]]) -> BatchData:
    """Stack dataset samples into a ``BatchData`` of ``[batch, time, lat, lon]``."""
    names = samples[0][0].keys()
    data = {name: torch.stack([s[0][name] for s in samples]) for name in names}
    return BatchData(data=data, time=np.stack([s[1] for s in samples]))


class _ResumableDataLoader(DataLoader):
    """A DataLoader whose sampler position counts batches *delivered*.

    Worker processes prefetch indices ahead of what the training loop has
    received; resetting the sampler's count on each delivered batch makes a
    mid-epoch checkpoint skip exactly the batches that were trained on.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.batch_sampler
        assert isinstance(sampler, WindowBatchSampler)
        if sampler.batches_done >= sampler.n_batches:
            sampler.batches_done = 0
        delivered = sampler.batches_done
        for batch in super().__iter__():
            delivered += 1
            sampler.batches_done = delivered
            yield batch
        sampler.batches_done = sampler.n_batches  # a rank may skip an empty share


@dataclasses.dataclass
class GriddedData:
    """A loader with its sampler and what the model needs to know about the data.

    Attributes:
        loader: yields ``BatchData`` with ``[local_batch, n_timesteps, lat, lon]``
            tensors and ``[local_batch, n_timesteps]`` times.
        sampler: the resumable batch sampler (its ``state_dict`` goes into
            checkpoints).
        dataset_info: grid, timestep, vertical coordinate, metadata.
        n_samples: samples (windows) in the dataset, over all ranks.
    """

    loader: DataLoader
    sampler: WindowBatchSampler
    dataset_info: DatasetInfo
    n_samples: int

    @property
    def n_batches(self) -> int:
        """Batches per epoch (each rank gets one share of each)."""
        return self.sampler.n_batches

    def set_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` (call at the start of every epoch)."""
        self.sampler.set_epoch(epoch)


def build_data_loader(
    config: DataLoaderConfig,
    *,
    names: list[str],
    n_timesteps: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    drop_last: bool = True,
) -> GriddedData:
    """Dataset, data-parallel batch sampler and DataLoader for ``config``.

    Args:
        config: dataset and batch settings.
        names: variables to load.
        n_timesteps: times per sample window.
        shuffle: shuffle samples each epoch (training) or keep order.
        rank: this process's rank.
        world_size: number of processes.
        seed: base shuffling seed, equal on all ranks.
        drop_last: drop the last incomplete global batch.

    Raises:
        ValueError: if the batch size does not divide over the processes, or the
            dataset has fewer samples than one global batch (with ``drop_last``).
    """
    dataset = build_dataset(config.dataset, names=names, n_timesteps=n_timesteps)
    sampler = WindowBatchSampler(
        len(dataset),
        global_batch_size=config.batch_size,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    if sampler.n_batches == 0:
        raise ValueError(
            f"{dataset.description} has {len(dataset)} samples "
            f"of {n_timesteps} times, fewer than batch_size={config.batch_size}; "
            "lower batch_size or widen the subset"
        )
    loader = _ResumableDataLoader(
        dataset,  # type: ignore[arg-type]  # a map-style dataset
        batch_sampler=sampler,
        num_workers=config.num_data_workers,
        collate_fn=collate_windows,
        prefetch_factor=config.prefetch_factor,
        # each new iterator draws a seed from this generator; from the global
        # one it would shift a stochastic network's noise on resume
        generator=torch.Generator().manual_seed(seed),
    )
    return GriddedData(
        loader=loader,
        sampler=sampler,
        dataset_info=dataset.dataset_info,
        n_samples=len(dataset),
    )
