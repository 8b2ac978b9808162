"""Histograms of predicted and target values (``histogram_diagnostics.nc``).

Each variable has ``n_bins`` equal bins over a range that grows with the
data: the first chunk sets it to the chunk's min..max; a later value outside
widens the range (to the new min..max) and the old counts move to the new
bins their bin centres fall in. Counts are exact for data inside the first
range; the 99.9999th percentile is read from the cumulative counts.
"""

import numpy as np
import torch
import xarray as xr

from fme.core.tensors import TensorMapping

PERCENTILE = 99.9999


class _Histogram:
    def __init__(self, n_bins: int):
        self.n_bins = n_bins
        self.edges: np.ndarray | None = None
        self.counts = np.zeros(n_bins, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        lo, hi = float(values.min()), float(values.max())
        if self.edges is None:
            if hi <= lo:
                hi = lo + 1.0
            self.edges = np.linspace(lo, hi, self.n_bins + 1)
        elif lo < self.edges[0] or hi > self.edges[-1]:
            centres = 0.5 * (self.edges[1:] + self.edges[:-1])
            new_edges = np.linspace(
                min(lo, self.edges[0]), max(hi, self.edges[-1]), self.n_bins + 1
            )
            moved, _ = np.histogram(centres, bins=new_edges, weights=self.counts)
            self.edges, self.counts = new_edges, moved.astype(np.int64)
        counts, _ = np.histogram(values, bins=self.edges)
        self.counts += counts

    def percentile(self, q: float) -> float:
        assert self.edges is not None
        cumulative = np.cumsum(self.counts) / max(int(self.counts.sum()), 1)
        index = int(np.searchsorted(cumulative, q / 100.0))
        return float(self.edges[min(index + 1, self.n_bins)])


class HistogramDiagnostic:
    """Histograms of prediction and target per variable.

    Args:
        names: variables.
        n_bins: bins per histogram.
        percentile_names: variables whose percentile is logged (None: all).
    """

    file_stem = "histogram"

    def __init__(
        self,
        *,
        names: list[str],
        n_bins: int = 200,
        percentile_names: list[str] | None = None,
    ):
        self._names = list(names)
        self._percentile_names = names if percentile_names is None else percentile_names
        self._hists = {
            kind: {n: _Histogram(n_bins) for n in names} for kind in ("gen", "target")
        }

    def record(
        self, *, prediction: TensorMapping, target: TensorMapping | None
    ) -> None:
        """Add ``[batch, n_leads, lat, lon]`` fields."""
        for kind, data in (("gen", prediction), ("target", target)):
            if data is None:
                continue
            for name in self._names:
                values = data[name].detach().to("cpu", torch.float64).numpy().ravel()
                self._hists[kind][name].add(values)

    def histogram(self, kind: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of ``kind`` (``gen`` or ``target``) for ``name``."""
        hist = self._hists[kind][name]
        assert hist.edges is not None, "nothing recorded"
        return hist.counts.copy(), hist.edges.copy()

    def get_metrics(self) -> dict[str, float]:
        """``histogram/<var>/99.9999th-percentile`` (and its bias against the target)."""
        metrics = {}
        for name in self._percentile_names:
            gen = self._hists["gen"][name]
            if gen.edges is None:
                continue
            value = gen.percentile(PERCENTILE)
            metrics[f"histogram/{name}/{PERCENTILE}th-percentile"] = value
            target = self._hists["target"][name]
            if target.edges is not None:
                metrics[f"histogram/{name}/{PERCENTILE}th-percentile-bias"] = (
                    value - target.percentile(PERCENTILE)
                )
        return metrics

    def get_dataset(self) -> xr.Dataset:
        """``<kind>-<var>`` counts over ``bin`` with ``<kind>-<var>_bin_edges``."""
        data = {}
        for kind, hists in self._hists.items():
            for name, hist in hists.items():
                if hist.edges is None:
                    continue
                data[f"{kind}-{name}"] = (("bin",), hist.counts)
                data[f"{kind}-{name}_bin_edges"] = (("bin_edge",), hist.edges)
        return xr.Dataset(data)
