"""Time-mean maps of a rollout and their bias (``time_mean_diagnostics.nc``).

The time mean is over every recorded lead and sample. Against the target it
gives ``time_mean/rmse/<var> = sqrt(gm((mean(x̂) - mean(x))²))`` and
``time_mean/bias/<var> = gm(mean(x̂) - mean(x))`` (``gm``: area-weighted global
mean); against reference maps (``time_mean_reference_data``) the same under
``time_mean_ref/``. Fed fields normalised with the network's statistics it is
ACE's ``time_mean_norm``: ``time_mean_norm/rmse/<var>`` and
``time_mean_norm/rmse/channel_mean``, the plain mean of the RMSEs over the
channel-mean variables (the number ACE's inline inference selects
``best_inference_ckpt.tar`` with).
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fme.core.gridded_ops import LatLonOperations
from fme.core.netcdf_files import open_dataset
from fme.core.tensors import TensorMapping


def read_reference_maps(
    path: str | Path, *, names: list[str], img_shape: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Time-mean reference maps ``{name: [lat, lon]}`` from a netCDF file.

    A leading ``time`` dimension is averaged away.

    Raises:
        ValueError: naming the file when it lacks a variable or has another grid.
    """
    with open_dataset(path, role="time-mean reference file") as ds:
        missing = [n for n in names if n not in ds.data_vars]
        if missing:
            raise ValueError(
                f"time-mean reference file {path} lacks {missing}; it holds "
                f"{sorted(str(v) for v in ds.data_vars)}. Add them or restrict the "
                "aggregator's variables"
            )
        maps = {}
        for name in names:
            values = np.asarray(ds[name].values, dtype=np.float64)
            if values.ndim == 3:
                values = values.mean(axis=0)
            if values.shape != img_shape:
                raise ValueError(
                    f"{name!r} in time-mean reference file {path} has shape "
                    f"{values.shape}, the data's grid is {img_shape}"
                )
            maps[name] = torch.tensor(values)
    return maps


class TimeMeanDiagnostic:
    """Accumulates time-mean maps of prediction (and target).

    Args:
        ops: area-weighted operations of the grid.
        names: variables.
        reference: ``{name: [lat, lon]}`` reference time means, or None.
        metadata: units and long names.
        name: metric prefix and file stem (``time_mean``, or ``time_mean_norm``
            for normalised fields).
        channel_mean_names: variables averaged into ``rmse/channel_mean``
            (None: no channel mean).
    """

    def __init__(
        self,
        *,
        ops: LatLonOperations,
        names: list[str],
        reference: dict[str, torch.Tensor] | None = None,
        metadata: dict[str, dict[str, str]] | None = None,
        name: str = "time_mean",
        channel_mean_names: list[str] | None = None,
    ):
        unknown = [n for n in channel_mean_names or [] if n not in names]
        if unknown:
            raise ValueError(
                f"aggregator.{name}.channel_mean_names {unknown} are not among the "
                f"scored variables {names}"
            )
        self._ops = ops
        self._names = list(names)
        self._reference = reference
        self._metadata = metadata or {}
        self.file_stem = name
        self._channel_mean_names = channel_mean_names
        self._gen: dict[str, torch.Tensor] = {}
        self._target: dict[str, torch.Tensor] = {}
        self._count = 0

    def record(
        self,
        *,
        prediction: TensorMapping,
        target: TensorMapping | None,
        time: np.ndarray,
    ) -> None:
        """Add ``[batch, n_leads, lat, lon]`` fields."""
        for store, data in ((self._gen, prediction), (self._target, target)):
            if data is None:
                continue
            for name in self._names:
                total = data[name].detach().to("cpu", torch.float64).sum(dim=(0, 1))
                store[name] = store[name] + total if name in store else total
        self._count += int(np.prod(prediction[self._names[0]].shape[:2]))

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the accumulated maps and counts over ranks, in place.

        Every rank must call it, also a rank that recorded nothing; the target
        maps take part when any rank recorded them.
        """
        shape = tuple(self._ops.area_weights.shape)
        has_target = float(reduce_sum(torch.tensor(float(bool(self._target)))))
        stores = [self._gen] + ([self._target] if has_target > 0 else [])
        for store in stores:
            for name in self._names:
                local = store.get(name, torch.zeros(shape, dtype=torch.float64))
                store[name] = reduce_sum(local)
        self._count = int(reduce_sum(torch.tensor(float(self._count))))

    def maps(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"gen" | "target": {name: [lat, lon]}}`` time means."""
        out = {"gen": {n: v / self._count for n, v in self._gen.items()}}
        if self._target:
            out["target"] = {n: v / self._count for n, v in self._target.items()}
        return out

    def _scores(self, gen: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
        bias = gen - other
        weights = self._ops.area_weights.to(torch.float64)
        return (
            float((weights * bias**2).sum().sqrt()),
            float((weights * bias).sum()),
        )

    def get_metrics(self) -> dict[str, float]:
        """``<name>/{rmse,bias}/<var>``, ``<name>_ref/...`` and channel-mean scores."""
        if self._count == 0:
            return {}
        maps = self.maps()
        prefix = self.file_stem
        metrics = {}
        for name, gen in maps["gen"].items():
            if "target" in maps:
                rmse, bias = self._scores(gen, maps["target"][name])
                metrics[f"{prefix}/rmse/{name}"] = rmse
                metrics[f"{prefix}/bias/{name}"] = bias
            if self._reference is not None:
                rmse, bias = self._scores(gen, self._reference[name])
                metrics[f"{prefix}_ref/rmse/{name}"] = rmse
                metrics[f"{prefix}_ref/bias/{name}"] = bias
        if self._channel_mean_names and "target" in maps:
            values = [metrics[f"{prefix}/rmse/{n}"] for n in self._channel_mean_names]
            metrics[f"{prefix}/rmse/channel_mean"] = float(np.mean(values))
        return metrics

    def get_dataset(self) -> xr.Dataset:
        """``gen_map-<var>``, ``target_map-<var>``, ``bias_map-<var>`` (and ``ref_bias_map``)."""
        if self._count == 0:
            return xr.Dataset()
        maps = self.maps()
        data = {}
        for name, gen in maps["gen"].items():
            attrs = dict(self._metadata.get(name, {}))
            data[f"gen_map-{name}"] = (("lat", "lon"), gen.numpy(), attrs)
            if "target" in maps:
                target = maps["target"][name]
                data[f"target_map-{name}"] = (("lat", "lon"), target.numpy(), attrs)
                data[f"bias_map-{name}"] = (
                    ("lat", "lon"),
                    (gen - target).numpy(),
                    attrs,
                )
            if self._reference is not None:
                bias = gen - self._reference[name]
                data[f"ref_bias_map-{name}"] = (("lat", "lon"), bias.numpy(), attrs)
        return xr.Dataset(data)
