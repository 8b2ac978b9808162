"""The files of one dataset as one time axis: netCDF files or zarr stores.

As in ACE, the files matching ``data_path/file_pattern`` are joined in sorted
order along time, and ``n_repeats`` repeats them with times shifted by the
whole span. Times must be regularly spaced inside each file. Where a file's
first time is more than one timestep after the previous file's last (separate
trajectories, as in the shallow-water data), the axis is split into
*segments*; a sample window never crosses a segment boundary. Overlapping or
backwards times are an error.

Reads go through handles each process opens lazily (``netCDF4.Dataset`` or a
``zarr`` group; never pickled, so the store is safe to send to data-loader
workers). A zarr store is read chunk by chunk: a window touches only the
chunks holding its times.
"""

import asyncio
import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import torch
import xarray as xr

from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.netcdf_files import TimeWindowReader, open_dataset

ENGINES = ("netcdf4", "zarr")
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


@dataclasses.dataclass
class _File:
    path: Path
    n_times: int


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


def _timedelta(delta: Any) -> datetime.timedelta:
    if isinstance(delta, np.timedelta64):
        return datetime.timedelta(microseconds=int(delta / np.timedelta64(1, "us")))
    return delta


def open_data(
    path: Path, engine: str | None, *, role: str = "data file", **kwargs: Any
) -> xr.Dataset:
    """A data file or zarr store as a lazy dataset; errors name the path.

    Args:
        path: the netCDF file or zarr store.
        engine: ``zarr`` for a zarr store, anything else for netCDF.
        role: what the file is, for messages.
        kwargs: passed to ``xr.open_dataset``.

    Raises:
        ValueError: the file or store is missing, empty or unreadable.
    """
    if engine != "zarr":
        return open_dataset(path, role=role, cache=False, **kwargs)
    if not Path(path).exists():
        raise ValueError(f"{role} (zarr store) {str(path)!r} does not exist")
    try:
        return xr.open_dataset(path, engine="zarr", chunks=None, cache=False, **kwargs)
    except Exception as err:  # zarr and its stores raise many kinds of errors
        raise _unreadable_store(path, err) from None


def _unreadable_store(path: Path, err: BaseException) -> ValueError:
    return ValueError(
        f"zarr store {str(path)!r} cannot be read ({type(err).__name__}: "
        f"{_first_line(err)}); it may be incomplete or corrupt: regenerate it"
    )


def _unreadable_times(
    path: Path, name: str, start: int, stop: int, err: BaseException
) -> ValueError:
    return ValueError(
        f"variable {name!r} in {str(path)!r} cannot be read at times "
        f"{start}..{stop - 1} ({type(err).__name__}: {_first_line(err)}); a checksum "
        "mismatch or decoding error means the file is corrupt: regenerate it"
    )


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else ""


class TimeSeriesStore:
    """Variables ``names`` of the files of one dataset, on one time axis.

    Args:
        data_path: directory holding the files (or zarr stores).
        file_pattern: glob of the files or stores inside ``data_path``.
        engine: ``netcdf4`` or ``zarr``.
        names: variables to read.
        n_repeats: how often the files repeat in time.

    Raises:
        ValueError: naming the path and the fix, when the path has no matching
            files, a variable is missing or badly shaped, grids differ, or
            times are irregular, overlapping or too few to infer a timestep.
    """

    def __init__(
        self,
        *,
        data_path: str,
        file_pattern: str,
        engine: str,
        names: list[str],
        n_repeats: int = 1,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r} is unknown; allowed: {ENGINES}")
        self.data_path = data_path
        self.engine = engine
        self.names = list(names)
        self._time_names: list[str] = []
        self._static: dict[str, np.ndarray] = {}
        self._handles: dict[int, Any] = {}
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._handles_pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        paths = self.paths(data_path, file_pattern)
        files, raw_times = [], []
        steps: set[datetime.timedelta] = set()
        for index, path in enumerate(paths):
            with open_data(path, engine) as ds:
                self._check_variables(ds, path)
                if index == 0:
                    self._info_from_first(ds, path)
                else:
                    self._check_same_grid(ds, path)
                times = _to_datetime64(ds["time"].values, path)
                steps.update(_timedelta(d) for d in np.diff(ds["time"].values))
            files.append(_File(path=path, n_times=len(times)))
            raw_times.append(times)
        self._files = files
        if len(steps) > 1:
            found = sorted(str(s) for s in steps)
            raise ValueError(
                f"times in {data_path} are not regularly spaced inside the files "
                f"(found steps {found}); every file needs one constant timestep"
            )
        if not steps:
            raise ValueError(
                f"cannot infer the timestep: every file in {data_path} has a single "
                "time; files need at least two times"
            )
        self.timestep = steps.pop()
        if self.timestep <= datetime.timedelta(0):
            raise ValueError(f"times in {data_path} must increase")
        self._build_axis(raw_times, n_repeats)

    @staticmethod
    def paths(data_path: str, file_pattern: str) -> list[Path]:
        """The files (or zarr stores) matching ``file_pattern``, sorted."""
        path = Path(data_path)
        if not path.is_dir():
            raise ValueError(
                f"dataset.data_path {str(path)!r} is not an existing directory; "
                "point it at the directory that holds the data files"
            )
        paths = sorted(path.glob(file_pattern))
        if not paths:
            raise ValueError(
                f"no files match file_pattern {file_pattern!r} in "
                f"dataset.data_path {str(path)!r}; check both settings"
            )
        return paths

    def _build_axis(self, raw_times: list[np.ndarray], n_repeats: int) -> None:
        step = np.timedelta64(self.timestep)
        span = sum(len(t) for t in raw_times) * step
        times, file_of, local = [], [], []
        for repeat in range(n_repeats):
            for index, file_times in enumerate(raw_times):
                times.append(file_times + repeat * span)
                file_of.append(np.full(len(file_times), index, dtype=np.int64))
                local.append(np.arange(len(file_times), dtype=np.int64))
        self.times = np.concatenate(times).astype("datetime64[ns]")
        self._file_of = np.concatenate(file_of)
        self._local = np.concatenate(local)
        gaps = np.diff(self.times)
        bad = np.flatnonzero(gaps < step)
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"times in {self.data_path} overlap or go backwards between "
                f"{self._files[self._file_of[i]].path.name} ({self.times[i]}) and "
                f"{self._files[self._file_of[i + 1]].path.name} "
                f"({self.times[i + 1]}); files must hold disjoint, increasing times"
            )
        breaks = np.flatnonzero(gaps != step) + 1
        self.segment_starts = np.concatenate([[0], breaks]).astype(np.int64)
        # segment_id[i]: which contiguous segment time i belongs to
        self.segment_id = np.zeros(len(self.times), dtype=np.int64)
        for b in breaks:
            self.segment_id[b:] += 1

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

    def _info_from_first(self, ds: xr.Dataset, path: Path) -> None:
        lat_dim, lon_dim = ds[self.names[0]].dims[-2:]
        for dim in (lat_dim, lon_dim):
            if dim not in ds.coords:
                raise ValueError(f"{path} has no coordinate values for dim {dim!r}")
        self.lat = torch.tensor(ds[lat_dim].values.astype(np.float32))
        self.lon = torch.tensor(ds[lon_dim].values.astype(np.float32))
        self.metadata = {
            name: {
                key: str(ds[name].attrs[key])
                for key in ("units", "long_name")
                if key in ds[name].attrs
            }
            for name in self.names
        }
        self.vertical_coordinate = vertical_coordinate(ds)
        for name in self.names:
            if "time" in ds[name].dims:
                self._time_names.append(name)
            else:
                self._static[name] = ds[name].values.astype(np.float32)

    def _check_same_grid(self, ds: xr.Dataset, path: Path) -> None:
        lat_dim, lon_dim = ds[self.names[0]].dims[-2:]
        for dim, expected in ((lat_dim, self.lat), (lon_dim, self.lon)):
            values = ds[dim].values.astype(np.float32) if dim in ds.coords else None
            if values is None or not np.array_equal(values, expected.numpy()):
                raise ValueError(
                    f"{path} has a different {dim!r} coordinate than the first file "
                    f"in {self.data_path}; all files need one grid"
                )

    @property
    def n_times(self) -> int:
        """Times on the axis (all repeats)."""
        return len(self.times)

    @property
    def n_bytes(self) -> int:
        """float32 bytes of all time-dependent variables over all files."""
        per_time = 4 * len(self._time_names) * self.lat.numel() * self.lon.numel()
        return per_time * sum(f.n_times for f in self._files)

    @property
    def time_dependent_names(self) -> list[str]:
        """The requested variables that have a time dimension."""
        return list(self._time_names)

    def static_fields(self) -> dict[str, np.ndarray]:
        """The requested time-invariant fields, ``{name: [lat, lon]}``."""
        return dict(self._static)

    def file_path(self, time_index: int) -> Path:
        """The file holding time ``time_index`` of the axis."""
        return self._files[int(self._file_of[time_index])].path

    def locate(self, time_index: int) -> tuple[Path, int, np.datetime64]:
        """``(file, index in the file, time in the file)`` of an axis time."""
        n_base = sum(f.n_times for f in self._files)
        repeat = time_index // n_base
        time = self.times[time_index] - repeat * n_base * np.timedelta64(self.timestep)
        return self.file_path(time_index), int(self._local[time_index]), time

    def file_start(self, file_index: int) -> int:
        """Axis index of the first time of file ``file_index`` (first repeat)."""
        return sum(f.n_times for f in self._files[:file_index])

    def _netcdf_readers(self, file_index: int) -> dict[str, TimeWindowReader]:
        """Readers of the requested variables of a file, opened lazily in this
        process (the readers keep the file open)."""
        self._check_pid()
        if file_index not in self._handles:
            path = self._files[file_index].path
            try:
                handle = netCDF4.Dataset(path, "r")
            except OSError as err:
                raise ValueError(
                    f"data file {str(path)!r} cannot be read as netCDF "
                    f"({type(err).__name__}: {_first_line(err)}); it may have "
                    "changed since the start: regenerate or replace it"
                ) from None
            handle.set_auto_mask(False)
            self._handles[file_index] = {
                name: TimeWindowReader(handle.variables[name])
                for name in self._time_names
            }
        return self._handles[file_index]

    def _zarr_arrays(self, file_index: int) -> dict[str, Any]:
        """The requested arrays of a zarr store, opened once per process (async API)."""
        self._check_pid()
        if file_index not in self._handles:
            from zarr.api import asynchronous

            async def open_arrays() -> dict[str, Any]:
                group = await asynchronous.open_group(
                    store=str(self._files[file_index].path), mode="r"
                )
                arrays = await asyncio.gather(
                    *(group.getitem(name) for name in self._time_names)
                )
                return dict(zip(self._time_names, arrays, strict=True))

            import zarr

            # zarrs (Rust) decodes the chunks; the arrays keep the pipeline
            with zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE}):
                try:
                    self._handles[file_index] = self._event_loop().run_until_complete(
                        open_arrays()
                    )
                except Exception as err:  # zarr raises many kinds of errors
                    raise _unreadable_store(self._files[file_index].path, err) from None
        return self._handles[file_index]

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _check_pid(self) -> None:
        if self._handles_pid != os.getpid():  # a forked worker: own handles
            self._handles, self._handles_pid, self._loop = {}, os.getpid(), None

    def _read_file(self, file_index: int, start: int, stop: int) -> dict:
        if file_index in self._cache:
            return {n: v[start:stop] for n, v in self._cache[file_index].items()}
        path = self._files[file_index].path
        if self.engine == "zarr":
            # every variable's chunks are fetched and decoded concurrently
            arrays = self._zarr_arrays(file_index)

            async def read_all() -> list[Any]:
                return await asyncio.gather(
                    *(a.getitem((slice(start, stop),)) for a in arrays.values()),
                    return_exceptions=True,
                )

            values = self._event_loop().run_until_complete(read_all())
            for name, value in zip(arrays, values, strict=True):
                if isinstance(value, BaseException):
                    raise _unreadable_times(path, name, start, stop, value)
            return {
                n: np.asarray(v, dtype=np.float32)
                for n, v in zip(arrays, values, strict=True)
            }
        out = {}
        for name, read in self._netcdf_readers(file_index).items():
            try:
                window = read(start, stop)
            except (OSError, RuntimeError) as err:  # e.g. a failed fletcher32 check
                raise _unreadable_times(path, name, start, stop, err) from None
            out[name] = np.asarray(window, dtype=np.float32)
        return out

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Time-dependent variables at axis times ``start:stop`` (``[n, lat, lon]``).

        The range may span several files (and repeats); it is read file by file.
        """
        if not 0 <= start < stop <= self.n_times:
            raise ValueError(
                f"times {start}:{stop} are outside the {self.n_times} times of "
                f"{self.data_path}"
            )
        pieces: dict[str, list[np.ndarray]] = {n: [] for n in self._time_names}
        i = start
        while i < stop:
            file_index = int(self._file_of[i])
            local = int(self._local[i])
            n = min(stop - i, self._files[file_index].n_times - local)
            for name, values in self._read_file(file_index, local, local + n).items():
                pieces[name].append(values)
            i += n
        return {
            n: v[0] if len(v) == 1 else np.concatenate(v) for n, v in pieces.items()
        }

    def load_into_memory(self) -> None:
        """Read every file once and serve all later reads from memory."""
        cache = {
            index: self._read_file(index, 0, f.n_times)
            for index, f in enumerate(self._files)
        }
        self._cache = cache

    def cached_files(self) -> list[tuple[int, dict[str, np.ndarray]]]:
        """``(axis index of its first time, {name: [time, lat, lon]})`` per cached file."""
        return [(self.file_start(i), arrays) for i, arrays in self._cache.items()]

    @property
    def in_memory(self) -> bool:
        """Whether reads are served from the in-memory copy."""
        return bool(self._cache)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # handles are per process, never pickled
        state["_loop"] = None
        return state


def vertical_coordinate(ds: xr.Dataset) -> HybridSigmaPressureCoordinate | None:
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
