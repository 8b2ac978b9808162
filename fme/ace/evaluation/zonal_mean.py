"""Zonal means per lead time (``zonal_mean_diagnostics.nc``).

``gen-<var>`` and ``target-<var>`` are ``(forecast_step, lat)``: the mean over
longitude and samples. Runs longer than ``max_size`` leads average
consecutive leads into ``max_size`` bins (lead ``k`` of ``n`` goes to bin
``(k - 1) * max_size // n``), so memory does not grow with the run.
"""

import numpy as np
import torch
import xarray as xr

from fme.core.tensors import TensorMapping


class ZonalMeanDiagnostic:
    """Accumulates zonal means of prediction (and target) per lead bin.

    Args:
        names: variables.
        n_lat: latitudes of the grid.
        n_forward_steps: rollout length.
        max_size: most lead bins kept.
        metadata: units and long names.
    """

    file_stem = "zonal_mean"

    def __init__(
        self,
        *,
        names: list[str],
        n_lat: int,
        n_forward_steps: int,
        max_size: int = 4096,
        metadata: dict[str, dict[str, str]] | None = None,
    ):
        self._names = list(names)
        self._n_steps = n_forward_steps
        self._n_bins = min(max_size, n_forward_steps)
        self._metadata = metadata or {}
        shape = (self._n_bins, n_lat)
        self._sums = {
            kind: {n: torch.zeros(shape, dtype=torch.float64) for n in names}
            for kind in ("gen", "target")
        }
        self._counts = {kind: torch.zeros(self._n_bins) for kind in ("gen", "target")}

    def record(
        self,
        *,
        prediction: TensorMapping,
        target: TensorMapping | None,
        lead_start: int,
    ) -> None:
        """Add ``[batch, n_leads, lat, lon]`` fields of leads ``lead_start...``."""
        n_leads = prediction[self._names[0]].shape[1]
        leads = torch.arange(lead_start, lead_start + n_leads)
        bins = (leads - 1) * self._n_bins // self._n_steps
        for kind, data in (("gen", prediction), ("target", target)):
            if data is None:
                continue
            batch = data[self._names[0]].shape[0]
            for name in self._names:
                zonal = data[name].detach().to("cpu", torch.float64).mean(dim=-1)
                self._sums[kind][name].index_add_(0, bins, zonal.sum(dim=0))
            self._counts[kind].index_add_(0, bins, torch.full((n_leads,), float(batch)))

    def means(self, kind: str) -> dict[str, np.ndarray]:
        """``{name: [bin, lat]}`` zonal means (NaN where nothing was recorded)."""
        counts = self._counts[kind].to(torch.float64)[:, None]
        return {
            n: torch.where(counts > 0, s / counts.clamp(min=1), torch.nan).numpy()
            for n, s in self._sums[kind].items()
        }

    def get_metrics(self) -> dict[str, float]:
        """No scalar metrics (the maps are the diagnostic)."""
        return {}

    def get_dataset(self) -> xr.Dataset:
        """``gen-<var>`` / ``target-<var>`` over ``(forecast_step, lat)``."""
        data = {}
        for kind in ("gen", "target"):
            if not float(self._counts[kind].sum()):
                continue
            for name, values in self.means(kind).items():
                attrs = dict(self._metadata.get(name, {}))
                data[f"{kind}-{name}"] = (("forecast_step", "lat"), values, attrs)
        return xr.Dataset(data)
