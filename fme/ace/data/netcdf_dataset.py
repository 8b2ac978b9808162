"""Windows of consecutive times from netCDF files or zarr stores, as in ACE.

The files of a dataset form one time axis (``fme.ace.data.store``); a sample
is a window of ``n_timesteps`` consecutive times on it, never crossing a gap
between separate trajectories. ``subset`` then selects samples by index or
time.

No file handle is kept open at construction, so the dataset is safe to fork
into data-loader workers. When the requested variables fit in
``CACHE_LIMIT_BYTES`` and ``cache_in_memory`` is on, they are read once at
construction (which also finds NaNs before training) and served from memory;
otherwise each window is read on request, chunk-aware for zarr.
"""

import dataclasses
import datetime
from collections.abc import Mapping

import numpy as np
import torch

from fme.ace.data.batch import DatasetInfo
from fme.ace.data.store import ENGINES, TimeSeriesStore
from fme.ace.data.time_subset import RepeatedInterval, Slice, TimeSlice
from fme.core.netcdf_files import first_nonfinite
from fme.core.tensors import TensorDict

__all__ = [
    "CACHE_LIMIT_BYTES",
    "FillNaNsConfig",
    "OverwriteConfig",
    "RepeatedInterval",
    "Slice",
    "TimeSlice",
    "XarrayDataConfig",
    "XarrayDataset",
]

CACHE_LIMIT_BYTES = 2 * 1024**3


@dataclasses.dataclass
class OverwriteConfig:
    """ACE's ``overwrite``: replace or scale loaded fields.

    Attributes:
        constant: ``{name: value}`` fields replaced by a constant.
        multiply_scalar: ``{name: factor}`` fields multiplied by a factor.
    """

    constant: Mapping[str, float] = dataclasses.field(default_factory=dict)
    multiply_scalar: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        both = sorted(set(self.constant) & set(self.multiply_scalar))
        if both:
            raise ValueError(
                f"overwrite lists {both} under both constant and multiply_scalar; "
                "keep each variable in one of them"
            )

    def apply(self, data: dict[str, np.ndarray]) -> None:
        """Overwrite ``data`` in place."""
        for name, value in self.constant.items():
            if name in data:
                data[name] = np.full_like(data[name], value)
        for name, factor in self.multiply_scalar.items():
            if name in data:
                data[name] = data[name] * np.float32(factor)


def _as_tensor(values: np.ndarray, *, owned: bool) -> torch.Tensor:
    """``values`` as a float32 tensor; an array nothing else holds is not copied."""
    flags = values.flags
    if owned and values.dtype == np.float32 and flags.c_contiguous and flags.writeable:
        return torch.from_numpy(values)
    return torch.tensor(values, dtype=torch.float32)


@dataclasses.dataclass
class FillNaNsConfig:
    """ACE's ``fill_nans``: replace NaNs by a constant before use.

    Attributes:
        method: only ``constant``.
        value: the value NaNs become.
    """

    method: str = "constant"
    value: float = 0.0

    def __post_init__(self):
        if self.method != "constant":
            raise ValueError(
                f"fill_nans.method {self.method!r} is unknown; allowed: constant"
            )


@dataclasses.dataclass
class XarrayDataConfig:
    """One dataset: files in a directory (ACE's ``dataset`` block).

    Attributes:
        data_path: directory holding the netCDF files or zarr stores.
        file_pattern: glob of the files (or the zarr store's name) inside
            ``data_path``; for ``engine: zarr`` it must be set (the default
            ``*.nc`` is refused, as in ACE).
        n_repeats: repeat the data in time this many times, times shifted by
            the whole span (the data should be continuous across repeats).
        engine: ``netcdf4`` or ``zarr`` (read lazily, chunk by chunk).
        spatial_dimensions: only ``latlon`` (the last two dims are lat, lon).
        subset: which samples to use: ``{start, stop, step}`` (indices),
            ``{start_time, stop_time, step}`` (times of a sample's first step,
            inclusive) or ``{interval_length, start, block_length}``.
        infer_timestep: must be true (ACE training needs the timestep).
        dtype: only ``float32``.
        overwrite: fields replaced by constants or scaled.
        fill_nans: replace NaNs by a constant (before the NaN check).
        isel: not supported here (must be empty).
        labels: not supported here (must be null).
        allow_nans: accept NaNs in the data; by default a NaN is an error.
        cache_in_memory: read every requested variable once at start-up and
            keep it in memory (fastest, and NaNs are found before training);
            false, or data larger than 2 GiB, streams each window from the
            files through handles each process opens lazily (least memory).
    """

    data_path: str
    file_pattern: str = "*.nc"
    n_repeats: int = 1
    engine: str = "netcdf4"
    spatial_dimensions: str = "latlon"
    subset: Slice | TimeSlice | RepeatedInterval = dataclasses.field(
        default_factory=Slice
    )
    infer_timestep: bool = True
    dtype: str | None = "float32"
    overwrite: OverwriteConfig = dataclasses.field(default_factory=OverwriteConfig)
    fill_nans: FillNaNsConfig | None = None
    isel: dict[str, int] = dataclasses.field(default_factory=dict)
    labels: list[str] | None = None
    allow_nans: bool = False
    cache_in_memory: bool = True

    def __post_init__(self):
        if not self.file_pattern:
            raise ValueError("file_pattern must be a non-empty glob such as '*.nc'")
        if self.engine not in ENGINES:
            raise ValueError(
                f"engine {self.engine!r} is unknown; allowed: {list(ENGINES)}"
            )
        if self.engine == "zarr" and self.file_pattern == "*.nc":
            raise ValueError(
                "engine is zarr but file_pattern is the netCDF default '*.nc'; set "
                "file_pattern to the zarr store's name, e.g. data.zarr"
            )
        if self.n_repeats < 1:
            raise ValueError(f"n_repeats must be >= 1, got {self.n_repeats}")
        if self.spatial_dimensions != "latlon":
            raise ValueError(
                f"not supported here: spatial_dimensions {self.spatial_dimensions!r}"
                "; only latlon grids"
            )
        if not self.infer_timestep:
            raise ValueError(
                "not supported here: infer_timestep: false (rollouts need the "
                "timestep); remove the key"
            )
        if self.dtype != "float32":
            raise ValueError(
                f"not supported here: dtype {self.dtype!r}; data are read as float32"
            )
        if self.isel:
            raise ValueError("not supported here: isel; select the data beforehand")
        if self.labels is not None:
            raise ValueError("not supported here: labels")

    @property
    def description(self) -> str:
        """``data_path/file_pattern``, for messages."""
        return f"{self.data_path}/{self.file_pattern}"


class XarrayDataset(torch.utils.data.Dataset):
    """Windows of ``n_timesteps`` consecutive times of one dataset.

    ``dataset[i]`` is ``({name: [n_timesteps, lat, lon] float32}, times)`` with
    ``times`` a ``[n_timesteps]`` ``datetime64[ns]`` array. Variables without a
    time dimension (``[lat, lon]``, e.g. a static mask) are repeated over time.

    Args:
        config: where the files are and which samples to use.
        names: variables to read.
        n_timesteps: times per window (e.g. ``n_forward_steps + 1``).

    Raises:
        ValueError: when the path has no matching files, a variable is missing,
            the data hold fewer times than a window, times are irregular, or
            the data hold NaNs that are not allowed.
    """

    def __init__(self, config: XarrayDataConfig, *, names: list[str], n_timesteps: int):
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        if not names:
            raise ValueError("names must list at least one variable to read")
        self.config = config
        self.names = list(names)
        self.n_timesteps = n_timesteps
        self.store = TimeSeriesStore(
            data_path=config.data_path,
            file_pattern=config.file_pattern,
            engine=config.engine,
            names=self.names,
            n_repeats=config.n_repeats,
        )
        self._static = self.store.static_fields()
        self._check_static(self._static)
        self._check_segments()
        starts = self._window_starts()
        if len(starts) == 0:
            raise ValueError(
                f"{config.description} holds no {n_timesteps} consecutive times "
                f"(its longest stretch has {self._longest_segment()} times) but a "
                f"sample needs n_timesteps={n_timesteps} (n_forward_steps + 1); use "
                "fewer forward steps or more data"
            )
        self._starts = starts[
            config.subset.select(self.store.times[starts], self.store.timestep)
        ]
        if len(self._starts) == 0:
            raise ValueError(
                f"subset {config.subset} selects none of the {len(starts)} samples "
                f"of {n_timesteps} times in {config.description} (they start from "
                f"{self.store.times[starts[0]]} to {self.store.times[starts[-1]]}); "
                "widen or remove the subset"
            )
        if config.cache_in_memory and self.store.n_bytes <= CACHE_LIMIT_BYTES:
            self.store.load_into_memory()
            for start, arrays in self.store.cached_files():
                self._check_finite(arrays, start=start)

    def _window_starts(self) -> np.ndarray:
        segment = self.store.segment_id
        n = self.n_timesteps
        if len(segment) < n:
            return np.arange(0)
        candidates = np.arange(len(segment) - n + 1)
        return candidates[segment[candidates] == segment[candidates + n - 1]]

    def _check_segments(self) -> None:
        """A separate trajectory (segment) shorter than a window is an error."""
        lengths = np.bincount(self.store.segment_id)
        short = np.flatnonzero(lengths < self.n_timesteps)
        if len(short) and len(lengths) == 1:
            raise ValueError(
                f"{self.config.description} has {lengths[0]} times, but a sample "
                f"needs n_timesteps={self.n_timesteps} consecutive times "
                "(n_forward_steps + 1); use fewer forward steps or more data"
            )
        if len(short):
            first_time = int(self.store.segment_starts[short[0]])
            raise ValueError(
                f"{self.store.file_path(first_time)} has {lengths[short[0]]} times "
                "in a separate trajectory (after a gap in time), but a "
                f"sample needs n_timesteps={self.n_timesteps} consecutive times "
                "(n_forward_steps + 1); use fewer forward steps or longer files"
            )

    def _longest_segment(self) -> int:
        return int(np.bincount(self.store.segment_id).max())

    def _check_static(self, static: dict[str, np.ndarray]) -> None:
        if self.config.fill_nans is not None:
            for name, values in static.items():
                static[name] = np.nan_to_num(values, nan=self.config.fill_nans.value)
        self._check_finite(static, start=None)

    def _check_finite(
        self, arrays: dict[str, np.ndarray], *, start: int | None
    ) -> None:
        """NaN (unless allowed or filled) and infinity are errors naming the file,
        variable and time.

        Args:
            arrays: ``{name: [time, lat, lon]}`` from axis time ``start`` on, or
                time-invariant ``{name: [lat, lon]}`` fields (``start`` None).
        """
        allow_nan = self.config.allow_nans or self.config.fill_nans is not None
        for name, values in arrays.items():
            found = first_nonfinite(values, allow_nan=allow_nan)
            if found is None:
                continue
            kind, index = found
            if start is None or index < 0:
                source, when = self.config.description, ""
            else:
                path, local, time = self.store.locate(start + index)
                stamp = np.datetime_as_string(time, unit="s")
                source, when = str(path), f" at time index {local} ({stamp})"
            fix = (
                "clean the data"
                if kind == "inf" or allow_nan
                else "clean the data, set fill_nans: {value: ...} or allow_nans: "
                "true in the dataset config"
            )
            raise ValueError(
                f"variable {name!r} in {source} contains {kind}{when}; {fix}"
            )

    def check_range(self, start: int, n_times: int) -> None:
        """Raise unless times ``start .. start + n_times - 1`` are readable together.

        Raises:
            ValueError: if the range leaves the data or crosses a gap between
                separate trajectories.
        """
        stop = start + n_times
        if start < 0 or stop > self.store.n_times:
            raise ValueError(
                f"times {start}..{stop - 1} are outside the {self.store.n_times} "
                f"times of {self.config.description}"
            )
        segment = self.store.segment_id
        if segment[start] != segment[stop - 1]:
            raise ValueError(
                f"times {start}..{stop - 1} of {self.config.description} cross a gap "
                f"in time (at {self.store.times[start]} .. {self.store.times[stop - 1]}"
                ") between separate trajectories; start later or roll out fewer steps"
            )

    def read_times(self, start: int, n_times: int) -> tuple[TensorDict, np.ndarray]:
        """``n_times`` consecutive times from axis index ``start``.

        Raises:
            ValueError: if the range leaves the data or crosses a gap.
        """
        self.check_range(start, n_times)
        stop = start + n_times
        arrays = self.store.read(start, stop)
        if not self.store.in_memory:
            if self.config.fill_nans is not None:
                value = self.config.fill_nans.value
                arrays = {k: np.nan_to_num(v, nan=value) for k, v in arrays.items()}
            self._check_finite(arrays, start=start)
        elif self.config.fill_nans is not None:
            value = self.config.fill_nans.value
            arrays = {k: np.nan_to_num(v, nan=value) for k, v in arrays.items()}
        for name, values in self._static.items():
            arrays[name] = np.broadcast_to(values, (n_times, *values.shape))
        self.config.overwrite.apply(arrays)
        # a streamed read's arrays are its own: they become tensors uncopied
        own = set() if self.store.in_memory else set(arrays) - set(self._static)
        data = {n: _as_tensor(arrays[n], owned=n in own) for n in self.names}
        return data, self.store.times[start:stop].copy()

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> tuple[TensorDict, np.ndarray]:
        return self.read_times(int(self._starts[index]), self.n_timesteps)

    @property
    def all_times(self) -> np.ndarray:
        """``datetime64[ns]`` times of the whole axis (inference indexes these)."""
        return self.store.times

    @property
    def sample_start_times(self) -> np.ndarray:
        """``datetime64[ns]`` first time of every selected sample."""
        return self.store.times[self._starts]

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid, timestep, vertical coordinate and metadata of the data."""
        return DatasetInfo(
            lat=self.store.lat.clone(),
            lon=self.store.lon.clone(),
            timestep=self.store.timestep,
            vertical_coordinate=self.store.vertical_coordinate,
            variable_metadata={k: dict(v) for k, v in self.store.metadata.items()},
        )

    @property
    def timestep(self) -> datetime.timedelta:
        """Time between consecutive times."""
        return self.store.timestep

    @property
    def description(self) -> str:
        """Where the data are, for messages."""
        return self.config.description
