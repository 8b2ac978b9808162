"""What a data loader yields and what a model needs to know about the grid."""

import dataclasses
import datetime

import numpy as np
import torch

from fme.core.gridded_ops import LatLonOperations
from fme.core.tensors import TensorDict


@dataclasses.dataclass
class HybridSigmaPressureCoordinate:
    """ACE's hybrid vertical coordinate: interface pressure ``p_k = ak_k + bk_k * ps``.

    Attributes:
        ak: ``[n_levels + 1]`` pressure offsets (Pa).
        bk: ``[n_levels + 1]`` dimensionless surface-pressure coefficients.
    """

    ak: torch.Tensor
    bk: torch.Tensor

    def __post_init__(self):
        if self.ak.shape != self.bk.shape or self.ak.dim() != 1:
            raise ValueError(
                f"ak and bk must be 1D of the same length, got {self.ak.shape} and {self.bk.shape}"
            )

    @property
    def n_levels(self) -> int:
        """Number of layers between the interfaces."""
        return self.ak.shape[0] - 1

    def interface_pressure(self, surface_pressure: torch.Tensor) -> torch.Tensor:
        """``[..., n_levels + 1]`` interface pressures for surface pressure ``[...]``."""
        ak = self.ak.to(surface_pressure)
        bk = self.bk.to(surface_pressure)
        return ak + bk * surface_pressure[..., None]

    def vertical_integral(
        self,
        integrand: torch.Tensor,
        surface_pressure: torch.Tensor,
        gravity: float = 9.80665,
    ) -> torch.Tensor:
        """Mass-weighted integral ``sum_k x_k * dp_k / g``; integrand is ``[..., n_levels]``."""
        dp = self.interface_pressure(surface_pressure).diff(dim=-1)
        return (integrand * dp).sum(dim=-1) / gravity


@dataclasses.dataclass
class DatasetInfo:
    """Grid and metadata a dataset provides to the model and corrector.

    Attributes:
        lat: ``[lat]`` latitudes in degrees.
        lon: ``[lon]`` longitudes in degrees.
        timestep: time between consecutive samples.
        vertical_coordinate: hybrid coordinate when the data has ``ak_<i>``/``bk_<i>``.
        variable_metadata: ``{name: {"units": ..., "long_name": ...}}``.
    """

    lat: torch.Tensor
    lon: torch.Tensor
    timestep: datetime.timedelta
    vertical_coordinate: HybridSigmaPressureCoordinate | None = None
    variable_metadata: dict[str, dict[str, str]] = dataclasses.field(
        default_factory=dict
    )

    @property
    def img_shape(self) -> tuple[int, int]:
        """``(n_lat, n_lon)``."""
        return (self.lat.shape[0], self.lon.shape[0])

    @property
    def gridded_operations(self) -> LatLonOperations:
        """Area-weighted operations for this grid (cos-latitude weights)."""
        return LatLonOperations.from_latitudes(self.lat, self.lon.shape[0])


@dataclasses.dataclass
class BatchData:
    """A batch of time windows.

    Attributes:
        data: ``{name: [batch, time, lat, lon]}``.
        time: ``[batch, time]`` numpy ``datetime64[ns]`` of each sample.
    """

    data: TensorDict
    time: np.ndarray

    @property
    def batch_size(self) -> int:
        """Number of windows in the batch."""
        return self.time.shape[0]

    @property
    def n_times(self) -> int:
        """Number of times in each window."""
        return self.time.shape[1]

    def to(self, device: torch.device | str) -> "BatchData":
        """A copy with tensors on ``device``."""
        return BatchData({k: v.to(device) for k, v in self.data.items()}, self.time)

    def select_samples(self, start: int, stop: int) -> "BatchData":
        """Samples ``start:stop`` of the batch (a data-parallel rank's shard)."""
        return BatchData(
            {k: v[start:stop] for k, v in self.data.items()}, self.time[start:stop]
        )
