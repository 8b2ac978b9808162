"""A small, fast convolutional network for tests (registered as ``ConvNet``)."""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fme.ace.models.registry import MODULE_REGISTRY, check_minimums


class ConvNet(nn.Module):
    """A stack of same-size convolutions with GELU between them.

    Padding is periodic in longitude (the last axis) and replicates the edge
    rows in latitude, so the output has the input's grid and shifting the input
    in longitude shifts the output alike.

    Args:
        n_in_channels: number of input channels.
        n_out_channels: number of output channels.
        hidden_channels: channels of the hidden layers.
        num_layers: number of convolutions (>= 1); 1 is a single linear layer.
        kernel_size: odd kernel size.
        noise_channels: standard-normal noise channels appended to the input on
            every call (0 for a deterministic network).
    """

    def __init__(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        hidden_channels: int,
        num_layers: int,
        kernel_size: int,
        noise_channels: int,
    ):
        super().__init__()
        self.noise_channels = noise_channels
        self.pad = kernel_size // 2
        widths = (
            [n_in_channels + noise_channels]
            + [hidden_channels] * (num_layers - 1)
            + [n_out_channels]
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[batch, n_in, lat, lon]`` to ``[batch, n_out, lat, lon]``."""
        if self.noise_channels > 0:
            noise = torch.randn(
                x.shape[0],
                self.noise_channels,
                *x.shape[2:],
                device=x.device,
                dtype=x.dtype,
            )
            x = torch.cat([x, noise], dim=1)
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = F.gelu(x)
            if self.pad > 0:
                x = F.pad(x, (self.pad, self.pad, 0, 0), mode="circular")
                x = F.pad(x, (0, 0, self.pad, self.pad), mode="replicate")
            x = conv(x)
        return x


@MODULE_REGISTRY.register("ConvNet")
@dataclass
class ConvNetConfig:
    """Configuration of :class:`ConvNet`.

    Attributes:
        hidden_channels: channels of the hidden layers (>= 1).
        num_layers: number of convolutions (>= 1).
        kernel_size: odd kernel size (>= 1).
        noise_channels: number of standard-normal noise channels appended to
            the input on every call; > 0 makes the network stochastic.
    """

    hidden_channels: int = 16
    num_layers: int = 2
    kernel_size: int = 3
    noise_channels: int = 0

    def __post_init__(self):
        check_minimums(
            self,
            {
                "hidden_channels": 1,
                "num_layers": 1,
                "kernel_size": 1,
                "noise_channels": 0,
            },
        )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")

    def build(
        self,
        *,
        n_in_channels: int,
        n_out_channels: int,
        img_shape: tuple[int, int],
    ) -> nn.Module:
        """Build the network; the kernel must fit in the grid's longitudes."""
        if self.kernel_size // 2 > img_shape[1]:
            raise ValueError(
                f"kernel_size {self.kernel_size} is too large for img_shape {img_shape}"
            )
        return ConvNet(
            n_in_channels=n_in_channels,
            n_out_channels=n_out_channels,
            hidden_channels=self.hidden_channels,
            num_layers=self.num_layers,
            kernel_size=self.kernel_size,
            noise_channels=self.noise_channels,
        )
