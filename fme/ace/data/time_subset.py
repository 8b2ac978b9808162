"""Which samples of a dataset to use (ACE's ``subset`` block).

Three forms, as in ACE: ``{start, stop, step}`` (sample indices, like a Python
slice), ``{start_time, stop_time, step}`` (times of a sample's first step) and
``{interval_length, start, block_length}`` (a repeated on/off mask). Each
returns the indices of the selected samples, given every sample's start time.
"""

import dataclasses
import datetime

import numpy as np
import pandas as pd


@dataclasses.dataclass
class Slice:
    """Index-based subset of the samples (ACE's ``subset: {start, stop, step}``).

    Applied like a Python slice to the list of all samples of the dataset.

    Attributes:
        start: first sample index (``None``: from the first).
        stop: stop before this sample index (``None``: to the end).
        step: take every ``step``-th sample (``None``: every sample).
    """

    start: int | None = None
    stop: int | None = None
    step: int | None = None

    def __post_init__(self):
        if self.step is not None and self.step < 1:
            raise ValueError(f"subset.step must be a positive integer, got {self.step}")

    @property
    def is_everything(self) -> bool:
        """Whether this subset keeps every sample."""
        return self.start is None and self.stop is None and self.step in (None, 1)

    def select(
        self, start_times: np.ndarray, timestep: datetime.timedelta
    ) -> np.ndarray:
        """Indices of the selected samples, given every sample's start time."""
        return np.arange(len(start_times))[self.start : self.stop : self.step]


def _check_time_string(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"subset.{name} must be an ISO 8601 time such as '2000-01-01' or "
            f"'2000-01-01T06:00', got {value!r}"
        ) from None


@dataclasses.dataclass
class TimeSlice:
    """Time-based subset (ACE's ``subset: {start_time, stop_time, step}``).

    Selects the samples whose first time lies between ``start_time`` and
    ``stop_time``, then every ``step``-th of those. As in ACE (xarray's
    partial-string indexing), a time given to a coarser resolution covers its
    whole period and both ends are inclusive: ``stop_time: '1995-12-31'`` keeps
    every sample starting on 31 December 1995, ``stop_time: '1995'`` every
    sample starting in 1995.

    Attributes:
        start_time: ISO 8601 time (``None``: no lower bound).
        stop_time: ISO 8601 time, inclusive (``None``: no upper bound).
        step: take every ``step``-th selected sample (``None``: all).
    """

    start_time: str | None = None
    stop_time: str | None = None
    step: int | None = None

    def __post_init__(self):
        _check_time_string("start_time", self.start_time)
        _check_time_string("stop_time", self.stop_time)
        if self.step is not None and self.step < 1:
            raise ValueError(f"subset.step must be a positive integer, got {self.step}")

    @property
    def is_everything(self) -> bool:
        """Whether this subset keeps every sample."""
        return self.start_time is None and self.stop_time is None and not self.step

    def select(
        self, start_times: np.ndarray, timestep: datetime.timedelta
    ) -> np.ndarray:
        """Indices of the selected samples, given every sample's start time."""
        index = pd.DatetimeIndex(start_times)
        if len(index) == 0:
            return np.arange(0)
        if not index.is_monotonic_increasing:
            # concatenated segments are sorted; a non-monotonic axis is a mask
            keep = np.ones(len(index), dtype=bool)
            if self.start_time is not None:
                keep &= index >= pd.Timestamp(self.start_time)
            if self.stop_time is not None:
                keep &= index < _end_of_period(self.stop_time)
            return np.flatnonzero(keep)[:: self.step]
        selected = index.slice_indexer(self.start_time, self.stop_time)
        return np.arange(len(index))[selected][:: self.step]


def _end_of_period(value: str) -> pd.Timestamp:
    """The first time after the period a partial time string names."""
    period = pd.Period(value)
    return (period + 1).start_time


@dataclasses.dataclass
class RepeatedInterval:
    """A repeated on/off mask over the samples (ACE's ``RepeatedInterval``).

    Keeps samples ``start .. start + interval_length - 1`` of every block of
    ``block_length`` samples. All three are integers (sample counts) or all
    are time spans such as ``"1d"`` or ``"6h"`` (multiples of the timestep).

    Attributes:
        interval_length: samples kept per block.
        start: offset of the kept interval inside the block.
        block_length: length of the repeated block.
    """

    interval_length: int | str
    start: int | str
    block_length: int | str

    def __post_init__(self):
        kinds = {type(v) for v in (self.interval_length, self.start, self.block_length)}
        if len(kinds) > 1:
            raise ValueError(
                "subset interval_length, start and block_length must all be integers "
                "or all be time spans such as '1d'"
            )
        if isinstance(self.interval_length, str):
            for name in ("interval_length", "start", "block_length"):
                try:
                    pd.Timedelta(getattr(self, name))
                except ValueError:
                    raise ValueError(
                        f"subset.{name} {getattr(self, name)!r} is not a time span "
                        "such as '1d' or '6h'"
                    ) from None

    @property
    def is_everything(self) -> bool:
        """Whether this subset keeps every sample (never assumed)."""
        return False

    def _in_steps(self, value: int | str, timestep: datetime.timedelta) -> int:
        if isinstance(value, int):
            return value
        span = pd.Timedelta(value).to_pytimedelta()
        if span % timestep != datetime.timedelta(0):
            raise ValueError(
                f"subset time span {value!r} is not a multiple of the data's "
                f"timestep {timestep}"
            )
        return span // timestep

    def select(
        self, start_times: np.ndarray, timestep: datetime.timedelta
    ) -> np.ndarray:
        """Indices of the selected samples, given every sample's start time."""
        length = self._in_steps(self.interval_length, timestep)
        start = self._in_steps(self.start, timestep)
        block = self._in_steps(self.block_length, timestep)
        if length < 1 or start < 0 or start + length > block:
            raise ValueError(
                f"subset interval (start {start}, length {length} steps) must fit "
                f"inside the block of {block} steps"
            )
        mask = np.zeros(block, dtype=bool)
        mask[start : start + length] = True
        tiled = np.tile(mask, len(start_times) // block + 1)[: len(start_times)]
        return np.flatnonzero(tiled)


Subset = Slice | TimeSlice | RepeatedInterval
