"""Windows of consecutive times read from netCDF files, configured as in ACE.

Each file holds one trajectory (or a chunk of consecutive times); a sample is a
window of ``n_timesteps`` consecutive times inside one file. Windows never
cross file boundaries, so separate trajectories are never glued together.

Files are scanned (opened and closed again) at construction; no netCDF handle
is kept open, so the dataset is safe to fork into data-loader workers. When the
requested variables of all files fit in ``CACHE_LIMIT_BYTES`` they are read
once, at construction (which also finds NaNs before training starts), and
served from memory; otherwise each window is read from its file on request.
"""

import dataclasses
import datetime
import os
from pathlib import Path

import netCDF4
import numpy as np
import torch
import xarray as xr

from fme.ace.data.batch import DatasetInfo, HybridSigmaPressureCoordinate
from fme.core.tensors import TensorDict

CACHE_LIMIT_BYTES = 2 * 1024**3


@dataclasses.dataclass
class Slice:
    """Index-based subset of the samples (ACE's ``subset: {start, stop, step}``).

    Applied like a Python slice to the list of all windows (samples) of the
    dataset, files in sorted order.

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

    def select(self, start_times: np.ndarray) -> np.ndarray:
        """Indices of the selected samples, given every sample's start time."""
        return np.arange(len(start_times))[self.start : self.stop : self.step]


@dataclasses.dataclass
class TimeSlice:
    """Time-based subset (ACE's ``subset: {start_time, stop_time, step}``).

    Selects the samples whose first time lies in ``[start_time, stop_time]``
    (both inclusive), then every ``step``-th of those.

    Attributes:
        start_time: ISO 8601 time, e.g. ``"2000-01-01"`` or
            ``"2000-01-01T06:00"`` (``None``: no lower bound).
        stop_time: ISO 8601 time, inclusive (``None``: no upper bound).
        step: take every ``step``-th selected sample (``None``: all).
    """

    start_time: str | None = None
    stop_time: str | None = None
    step: int | None = None

    def __post_init__(self):
        for name in ("start_time", "stop_time"):
            value = getattr(self, name)
            if value is not None:
                try:
                    np.datetime64(value, "ns")
                except ValueError:
                    raise ValueError(
                        f"subset.{name} must be an ISO 8601 time such as "
                        f"'2000-01-01T06:00', got {value!r}"
                    ) from None
        if self.step is not None and self.step < 1:
            raise ValueError(f"subset.step must be a positive integer, got {self.step}")

    def select(self, start_times: np.ndarray) -> np.ndarray:
        """Indices of the selected samples, given every sample's start time."""
        keep = np.ones(len(start_times), dtype=bool)
        if self.start_time is not None:
            keep &= start_times >= np.datetime64(self.start_time, "ns")
        if self.stop_time is not None:
            keep &= start_times <= np.datetime64(self.stop_time, "ns")
        return np.flatnonzero(keep)[:: self.step]


@dataclasses.dataclass
class XarrayDataConfig:
    """Where the netCDF files of one dataset are (ACE's ``dataset`` block).

    Attributes:
        data_path: directory holding the netCDF files.
        file_pattern: glob pattern of the files inside ``data_path``.
        subset: which samples to use: ``{start, stop, step}`` (indices) or
            ``{start_time, stop_time, step}`` (ISO times of a window's start).
        allow_nans: accept NaNs in the data; by default a NaN is an error.
        cache_in_memory: read every requested variable once at start-up and
            keep it in memory (fastest, and NaNs are found before training);
            false, or data larger than 2 GiB, streams each window from the
            files through handles each process opens lazily (least memory).
    """

    data_path: str
    file_pattern: str = "*.nc"
    subset: Slice | TimeSlice = dataclasses.field(default_factory=Slice)
    allow_nans: bool = False
    cache_in_memory: bool = True

    def __post_init__(self):
        if not self.file_pattern:
            raise ValueError("file_pattern must be a non-empty glob such as '*.nc'")


@dataclasses.dataclass
class _FileInfo:
    path: Path
    times: np.ndarray  # datetime64[ns]
    n_windows: int


def _to_datetime64(values: np.ndarray, path: Path) -> np.ndarray:
    """Decoded time values (datetime64 or cftime objects) as datetime64[ns]."""
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[ns]")
    for v in values:
        # numpy silently wraps dates outside the datetime64[ns] range
        if not 1678 <= v.year <= 2261:
            raise ValueError(
                f"time {v.isoformat()} in {path} is outside the datetime64[ns] "
                "range (years 1678-2261) that batches carry; shift the time axis"
            )
    return np.array([np.datetime64(v.isoformat(), "ns") for v in values])


def _timedelta(delta) -> datetime.timedelta:
    if isinstance(delta, np.timedelta64):
        return datetime.timedelta(microseconds=int(delta / np.timedelta64(1, "us")))
    return delta


class XarrayDataset(torch.utils.data.Dataset):
    """Windows of ``n_timesteps`` consecutive times from a directory of netCDF files.

    ``dataset[i]`` is ``({name: [n_timesteps, lat, lon] float32}, times)`` with
    ``times`` a ``[n_timesteps]`` ``datetime64[ns]`` array. Variables without a
    time dimension (``[lat, lon]``, e.g. a static mask) are repeated over time.

    Args:
        config: where the files are and which samples to use.
        names: variables to read.
        n_timesteps: times per window (e.g. ``n_forward_steps + 1``).

    Raises:
        ValueError: when the path has no matching files, a variable is missing,
            a file is shorter than a window, times are irregular, or the data
            hold NaNs that are not allowed.
    """

    def __init__(self, config: XarrayDataConfig, *, names: list[str], n_timesteps: int):
        if n_timesteps < 1:
            raise ValueError(f"n_timesteps must be >= 1, got {n_timesteps}")
        if not names:
            raise ValueError("names must list at least one variable to read")
        self.config = config
        self.names = list(names)
        self.n_timesteps = n_timesteps
        self._files = self._scan_files()
        self._windows = np.array(
            [(i, s) for i, f in enumerate(self._files) for s in range(f.n_windows)],
            dtype=np.int64,
        ).reshape(-1, 2)
        start_times = np.array(
            [self._files[i].times[s] for i, s in self._windows], dtype="datetime64[ns]"
        )
        self._selected = config.subset.select(start_times)
        if len(self._selected) == 0:
            raise ValueError(
                f"subset {config.subset} selects none of the {len(start_times)} "
                f"samples in {config.data_path}; widen or remove the subset"
            )
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._handles: dict[int, netCDF4.Dataset] = {}
        self._handles_pid = os.getpid()
        if config.cache_in_memory and self._data_bytes() <= CACHE_LIMIT_BYTES:
            for i in range(len(self._files)):
                self._cache[i] = self._read(i, None)

    def _files_matching(self) -> list[Path]:
        path = Path(self.config.data_path)
        if not path.is_dir():
            raise ValueError(
                f"dataset.data_path {str(path)!r} is not an existing directory; "
                "point it at the directory that holds the netCDF files"
            )
        files = sorted(p for p in path.glob(self.config.file_pattern) if p.is_file())
        if not files:
            raise ValueError(
                f"no files match file_pattern {self.config.file_pattern!r} in "
                f"dataset.data_path {str(path)!r}; check both settings"
            )
        return files

    def _scan_files(self) -> list[_FileInfo]:
        infos = []
        steps: set[datetime.timedelta] = set()
        for index, path in enumerate(self._files_matching()):
            with xr.open_dataset(path) as ds:
                self._check_variables(ds, path)
                if index == 0:
                    self._info_from_first_file(ds, path)
                else:
                    self._check_same_grid(ds, path)
                raw_times = ds["time"].values
            steps.update(_timedelta(d) for d in np.diff(raw_times))
            n_times = len(raw_times)
            if n_times < self.n_timesteps:
                raise ValueError(
                    f"{path} has {n_times} times but a sample needs "
                    f"n_timesteps={self.n_timesteps} consecutive times "
                    "(n_forward_steps + 1); use fewer forward steps or longer files"
                )
            infos.append(
                _FileInfo(
                    path=path,
                    times=_to_datetime64(raw_times, path),
                    n_windows=n_times - self.n_timesteps + 1,
                )
            )
        if len(steps) > 1:
            found = sorted(str(s) for s in steps)
            raise ValueError(
                f"times in {self.config.data_path} are not regularly spaced "
                f"(found steps {found}); every file needs one constant timestep"
            )
        if not steps:
            raise ValueError(
                f"cannot infer the timestep: every file in {self.config.data_path} "
                "has a single time"
            )
        self._timestep = steps.pop()
        return infos

    def _check_variables(self, ds: xr.Dataset, path: Path) -> None:
        if "time" not in ds.coords:
            raise ValueError(f"{path} has no 'time' coordinate")
        missing = [n for n in self.names if n not in ds.data_vars]
        if missing:
            raise ValueError(
                f"variables {missing} are not in {path}; it holds "
                f"{sorted(str(v) for v in ds.data_vars)}. Fix the names in the "
                "config or the dataset path"
            )
        for name in self.names:
            dims = ds[name].dims
            if "time" in dims:
                well_formed = len(dims) == 3 and dims[0] == "time"
            else:
                well_formed = len(dims) == 2
            if not well_formed:
                raise ValueError(
                    f"variable {name!r} in {path} has dims {dims}; expected "
                    "(time, lat, lon) or, for a time-invariant field, (lat, lon)"
                )

    def _info_from_first_file(self, ds: xr.Dataset, path: Path) -> None:
        lat_dim, lon_dim = ds[self.names[0]].dims[-2:]
        for dim in (lat_dim, lon_dim):
            if dim not in ds.coords:
                raise ValueError(f"{path} has no coordinate values for dim {dim!r}")
        self._lat = torch.tensor(ds[lat_dim].values.astype(np.float32))
        self._lon = torch.tensor(ds[lon_dim].values.astype(np.float32))
        self._metadata = {
            name: {
                key: str(ds[name].attrs[key])
                for key in ("units", "long_name")
                if key in ds[name].attrs
            }
            for name in self.names
        }
        self._vertical = _vertical_coordinate(ds)

    def _check_same_grid(self, ds: xr.Dataset, path: Path) -> None:
        lat_dim, lon_dim = ds[self.names[0]].dims[-2:]
        for dim, expected in ((lat_dim, self._lat), (lon_dim, self._lon)):
            values = ds[dim].values.astype(np.float32) if dim in ds.coords else None
            if values is None or not np.array_equal(values, expected.numpy()):
                raise ValueError(
                    f"{path} has a different {dim!r} coordinate than "
                    f"{self.config.data_path}'s first file; all files need one grid"
                )

    def _data_bytes(self) -> int:
        per_time = 4 * len(self.names) * self._lat.numel() * self._lon.numel()
        return sum(per_time * len(f.times) for f in self._files)

    def _read(self, file_index: int, window: slice | None) -> dict[str, np.ndarray]:
        """Requested variables of one file, all times or the ``window`` times."""
        path = self._files[file_index].path
        out = {}
        # cache=False and copy=False: read each array once, keep no second copy
        with xr.open_dataset(path, cache=False) as ds:
            for name in self.names:
                variable = ds[name]
                if window is not None and "time" in variable.dims:
                    variable = variable.isel(time=window)
                values = variable.values.astype(np.float32, copy=False)
                if not self.config.allow_nans and np.isnan(values).any():
                    raise ValueError(
                        f"variable {name!r} in {path} contains NaN; clean the data "
                        "or set allow_nans: true in the dataset config"
                    )
                out[name] = values
        return out

    def _handle(self, file_index: int) -> netCDF4.Dataset:
        """An open handle of a file, opened lazily in this process."""
        if self._handles_pid != os.getpid():  # a forked worker: own handles
            self._handles, self._handles_pid = {}, os.getpid()
        if file_index not in self._handles:
            handle = netCDF4.Dataset(self._files[file_index].path, "r")
            handle.set_auto_mask(False)
            self._handles[file_index] = handle
        return self._handles[file_index]

    def _read_window(self, file_index: int, window: slice) -> dict[str, np.ndarray]:
        """Requested variables of ``window`` times, read through an open handle."""
        handle = self._handle(file_index)
        out = {}
        for name in self.names:
            variable = handle.variables[name]
            if "time" in variable.dimensions:
                values = np.asarray(variable[window], dtype=np.float32)
            else:
                values = np.asarray(variable[:], dtype=np.float32)
            if not self.config.allow_nans and np.isnan(values).any():
                raise ValueError(
                    f"variable {name!r} in {self._files[file_index].path} contains "
                    "NaN; clean the data or set allow_nans: true in the dataset config"
                )
            out[name] = values
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # handles are per process, never pickled
        return state

    def __len__(self) -> int:
        return len(self._selected)

    def __getitem__(self, index: int) -> tuple[TensorDict, np.ndarray]:
        file_index, start = (int(v) for v in self._windows[self._selected[index]])
        window = slice(start, start + self.n_timesteps)
        if file_index in self._cache:
            arrays = self._cache[file_index]
            times_slice = window
        else:
            arrays = self._read_window(file_index, window)
            times_slice = slice(None)
        data = {}
        for name, values in arrays.items():
            if values.ndim == 2:  # time-invariant: repeat over the window
                chunk = np.broadcast_to(values, (self.n_timesteps, *values.shape))
            else:
                chunk = values[times_slice]
            data[name] = torch.tensor(chunk, dtype=torch.float32)
        times = self._files[file_index].times[window].copy()
        return data, times

    @property
    def sample_start_times(self) -> np.ndarray:
        """``datetime64[ns]`` first time of every selected sample."""
        return np.array(
            [self._files[i].times[s] for i, s in self._windows[self._selected]],
            dtype="datetime64[ns]",
        )

    @property
    def dataset_info(self) -> DatasetInfo:
        """Grid, timestep, vertical coordinate and metadata of the data."""
        return DatasetInfo(
            lat=self._lat.clone(),
            lon=self._lon.clone(),
            timestep=self._timestep,
            vertical_coordinate=self._vertical,
            variable_metadata={k: dict(v) for k, v in self._metadata.items()},
        )


def _vertical_coordinate(ds: xr.Dataset) -> HybridSigmaPressureCoordinate | None:
    """``ak_<i>``/``bk_<i>`` scalars (i = 0, 1, ...) as a hybrid coordinate."""
    ak: list[float] = []
    bk: list[float] = []
    while f"ak_{len(ak)}" in ds.variables and f"bk_{len(bk)}" in ds.variables:
        ak.append(float(ds[f"ak_{len(ak)}"].values))
        bk.append(float(ds[f"bk_{len(bk)}"].values))
    if not ak:
        return None
    if f"ak_{len(ak)}" in ds.variables or f"bk_{len(bk)}" in ds.variables:
        raise ValueError(
            f"ak_<i>/bk_<i> in {ds.encoding.get('source', 'the data')} do not pair up "
            f"at i={len(ak)}; both must exist for every interface"
        )
    return HybridSigmaPressureCoordinate(
        ak=torch.tensor(ak, dtype=torch.float32),
        bk=torch.tensor(bk, dtype=torch.float32),
    )
