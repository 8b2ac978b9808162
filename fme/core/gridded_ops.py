"""Area-weighted operations on a regular latitude-longitude grid."""

import torch


class LatLonOperations:
    """Area-weighted reductions over the last two (lat, lon) dimensions.

    Args:
        area_weights: ``[lat, lon]`` non-negative weights proportional to cell area
            (e.g. cos(latitude)); they are normalised to sum to one.
    """

    def __init__(self, area_weights: torch.Tensor):
        if area_weights.dim() != 2:
            raise ValueError(
                f"area_weights must be [lat, lon], got {area_weights.shape}"
            )
        self.area_weights = area_weights / area_weights.sum()

    @classmethod
    def from_latitudes(
        cls, lat_degrees: torch.Tensor, n_lon: int
    ) -> "LatLonOperations":
        """Cos-latitude weights for cell-centre latitudes given in degrees."""
        weights = torch.cos(torch.deg2rad(lat_degrees.to(torch.float64))).clamp(min=0.0)
        return cls(weights[:, None].expand(-1, n_lon).to(torch.float32).contiguous())

    def to(self, device: torch.device | str) -> "LatLonOperations":
        """A copy whose weights live on ``device``."""
        return LatLonOperations(self.area_weights.to(device))

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        return self.area_weights.to(device=x.device, dtype=x.dtype)

    def area_weighted_mean(
        self, x: torch.Tensor, keepdim: bool = False
    ) -> torch.Tensor:
        """Area-weighted mean over the last two dims; NaNs are not allowed."""
        mean = (x * self._weights_for(x)).sum(dim=(-2, -1))
        if keepdim:
            mean = mean[..., None, None]
        return mean

    def area_weighted_rmse(
        self, predicted: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Square root of the area-weighted mean squared difference."""
        return self.area_weighted_mean((predicted - target) ** 2).sqrt()

    def area_weighted_bias(
        self, predicted: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Area-weighted mean of ``predicted - target``."""
        return self.area_weighted_mean(predicted - target)
