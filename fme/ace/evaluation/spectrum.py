"""Spherical power spectrum of predicted and target fields (``power_spectrum_diagnostics.nc``).

As in ACE, the power at total wavenumber ``l`` is ``sum_{m >= 0} |c_lm|²`` of
torch-harmonics' real SHT (orthonormal) of the field, averaged over samples
and leads. ``power_spectrum/mean_abs_norm_bias/<var>`` is the mean over
``l`` of ``|P_gen(l) - P_target(l)| / P_target(l)``.
"""

import numpy as np
import torch
import torch_harmonics
import xarray as xr

from fme.core.tensors import TensorMapping


def grid_of(lat_degrees: torch.Tensor) -> str:
    """``legendre-gauss`` for Gauss-Legendre latitudes, else ``equiangular``."""
    n = lat_degrees.numel()
    nodes, _ = np.polynomial.legendre.leggauss(n)
    gauss = np.sort(np.rad2deg(np.arcsin(nodes)))
    if np.allclose(np.sort(lat_degrees.double().numpy()), gauss, atol=1e-3):
        return "legendre-gauss"
    return "equiangular"


def power_spectrum(field: torch.Tensor, sht: torch_harmonics.RealSHT) -> torch.Tensor:
    """``[..., l]`` spherical power spectrum of ``[..., lat, lon]`` fields."""
    coefficients = sht(field)
    return (coefficients.abs() ** 2).sum(dim=-1)


class PowerSpectrumDiagnostic:
    """Mean power spectrum of prediction and target per variable.

    Scores, with ``r = gen / target - 1`` per degree ``l`` of ``n``:
    ``mean_abs_norm_bias = sum(|r|) / n``, ``positive_norm_bias = sum(r[r > 0]) /
    n``, ``negative_norm_bias = sum(r[r < 0]) / n`` and
    ``smallest_scale_norm_bias = r[n - 1]`` (ACE's definitions).

    Args:
        names: variables.
        lat: ``[lat]`` latitudes in degrees (north to south or south to north).
        n_lon: longitudes.
        report_directional_bias: also log ``positive_norm_bias`` and
            ``negative_norm_bias`` (ACE's default).
    """

    file_stem = "power_spectrum"

    def __init__(
        self,
        *,
        names: list[str],
        lat: torch.Tensor,
        n_lon: int,
        report_directional_bias: bool = True,
    ):
        self._names = list(names)
        self._directional = report_directional_bias
        self._flip = bool(lat[0] < lat[-1])  # torch-harmonics wants north first
        self._sht = torch_harmonics.RealSHT(
            lat.numel(), n_lon, grid=grid_of(lat)
        ).double()
        self._sums: dict[str, dict[str, torch.Tensor]] = {"gen": {}, "target": {}}
        self._counts = {"gen": 0, "target": 0}

    def record(
        self, *, prediction: TensorMapping, target: TensorMapping | None
    ) -> None:
        """Add ``[batch, n_leads, lat, lon]`` fields."""
        for kind, data in (("gen", prediction), ("target", target)):
            if data is None:
                continue
            for name in self._names:
                field = data[name].detach().to("cpu", torch.float64)
                if self._flip:
                    field = field.flip(-2)
                spectrum = power_spectrum(field, self._sht).sum(dim=(0, 1))
                sums = self._sums[kind]
                sums[name] = sums[name] + spectrum if name in sums else spectrum
            self._counts[kind] += int(np.prod(data[self._names[0]].shape[:2]))

    def mean(self, kind: str) -> dict[str, torch.Tensor]:
        """``{name: [l]}`` mean spectrum of ``gen`` or ``target``."""
        return {n: s / self._counts[kind] for n, s in self._sums[kind].items()}

    def get_metrics(self) -> dict[str, float]:
        """``power_spectrum/<score>/<var>`` (with a target); see the class."""
        if not self._counts["target"] or not self._counts["gen"]:
            return {}
        gen, target = self.mean("gen"), self.mean("target")
        metrics = {}
        for name in self._names:
            # (gen - target) / target: exactly 0 where both powers are equal
            ratio = (gen[name] - target[name]) / target[name].clamp(min=1e-30)
            n = ratio.numel()
            scores = {
                "mean_abs_norm_bias": float(ratio.abs().sum() / n),
                "smallest_scale_norm_bias": float(ratio[-1]),
            }
            if self._directional:
                scores["positive_norm_bias"] = float(ratio[ratio > 0].sum() / n)
                scores["negative_norm_bias"] = float(ratio[ratio < 0].sum() / n)
            for score, value in scores.items():
                metrics[f"power_spectrum/{score}/{name}"] = value
        return metrics

    def get_dataset(self) -> xr.Dataset:
        """``<kind>-<var>`` over ``wavenumber``."""
        data = {}
        for kind in ("gen", "target"):
            if not self._counts[kind]:
                continue
            for name, spectrum in self.mean(kind).items():
                data[f"{kind}-{name}"] = (("wavenumber",), spectrum.numpy())
        if not data:
            return xr.Dataset()
        n = len(next(iter(data.values()))[1])
        return xr.Dataset(data, coords={"wavenumber": np.arange(n)})
