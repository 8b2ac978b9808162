"""Per-variable standard normalisation and its YAML configuration."""

import dataclasses
import math
from collections.abc import Iterable, Sequence

import torch

from fme.core.netcdf_files import checked_values, open_dataset
from fme.core.tensors import TensorDict, TensorMapping


class StandardNormalizer:
    """Normalise ``(x - mean) / std`` per variable with scalar statistics.

    Args:
        means: a scalar tensor per variable name.
        stds: a scalar tensor per variable name (same keys as ``means``).
    """

    def __init__(self, means: TensorMapping, stds: TensorMapping):
        if set(means) != set(stds):
            raise ValueError(
                f"means and stds must have the same variables, got {sorted(means)} "
                f"and {sorted(stds)}"
            )
        for name, std in stds.items():
            if not torch.all(std > 0):
                raise ValueError(f"std of {name!r} must be positive, got {std}")
        self.means: TensorDict = {
            k: torch.as_tensor(v, dtype=torch.float32) for k, v in means.items()
        }
        self.stds: TensorDict = {
            k: torch.as_tensor(v, dtype=torch.float32) for k, v in stds.items()
        }
        # statistics of packed variables, by names, layout, device and dtype
        self._packed: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def names(self) -> list[str]:
        """The variables this normaliser knows."""
        return list(self.means)

    def normalize(self, tensors: TensorMapping) -> TensorDict:
        """``(x - mean) / std`` for every variable in ``tensors``."""
        return {k: (x - self._m(k, x)) / self._s(k, x) for k, x in tensors.items()}

    def denormalize(self, tensors: TensorMapping) -> TensorDict:
        """``x * std + mean`` for every variable in ``tensors``."""
        return {k: x * self._s(k, x) + self._m(k, x) for k, x in tensors.items()}

    def normalize_packed(
        self, packed: torch.Tensor, names: Sequence[str], *, dim: int = 1
    ) -> torch.Tensor:
        """``(x - mean) / std`` of a tensor whose axis ``dim`` holds ``names``.

        The same numbers as ``normalize`` of each variable (the same float
        operations per element), in two operations instead of two per variable.
        """
        mean, std = self._packed_stats(packed, names, dim)
        return (packed - mean) / std

    def denormalize_packed(
        self, packed: torch.Tensor, names: Sequence[str], *, dim: int = 1
    ) -> torch.Tensor:
        """``x * std + mean`` of a tensor whose axis ``dim`` holds ``names``;
        the same numbers as ``denormalize`` of each variable."""
        mean, std = self._packed_stats(packed, names, dim)
        return packed * std + mean

    def _packed_stats(
        self, packed: torch.Tensor, names: Sequence[str], dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means and stds of ``names`` shaped to broadcast along axis ``dim``."""
        dim = dim % packed.dim()
        if packed.shape[dim] != len(names):
            raise ValueError(
                f"axis {dim} of the packed tensor {tuple(packed.shape)} must hold "
                f"the {len(names)} variables {list(names)}"
            )
        key = (tuple(names), packed.dim(), dim, packed.device, packed.dtype)
        if key not in self._packed:
            shape = [1] * packed.dim()
            shape[dim] = len(names)
            mean, std = (
                torch.stack([stats[n] for n in names])
                .to(device=packed.device, dtype=packed.dtype)
                .view(shape)
                for stats in (self.means, self.stds)
            )
            self._packed[key] = (mean, std)
        return self._packed[key]

    def _m(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.means[name].to(device=x.device, dtype=x.dtype)

    def _s(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.stds[name].to(device=x.device, dtype=x.dtype)

    def get_state(self) -> dict[str, dict[str, float]]:
        """Plain-data state for checkpoints."""
        return {
            "means": {k: float(v) for k, v in self.means.items()},
            "stds": {k: float(v) for k, v in self.stds.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, dict[str, float]]) -> "StandardNormalizer":
        """Rebuild from ``get_state()`` output."""
        return cls(
            means={k: torch.tensor(v) for k, v in state["means"].items()},
            stds={k: torch.tensor(v) for k, v in state["stds"].items()},
        )


def _read_scalars(path: str, names: Iterable[str], role: str) -> dict[str, float]:
    """One scalar per name from a statistics file; bad values name file and name."""
    with open_dataset(path, role=f"normalization {role} file") as ds:
        missing = [n for n in names if n not in ds.variables]
        if missing:
            raise ValueError(
                f"normalization {role} file {path!r} has no statistics for {missing}; "
                f"it holds {sorted(str(v) for v in ds.data_vars)}"
            )
        values = {
            n: float(checked_values(ds[n], path=path, name=n).item()) for n in names
        }
    kind = "std" if role == "stds" else "mean"
    for name, value in values.items():
        if kind == "std" and not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"std of {name!r} in {path!r} must be positive and finite, got "
                f"{value}; a constant field cannot be normalised: recompute the "
                "statistics or drop the variable"
            )
        if not math.isfinite(value):
            raise ValueError(
                f"mean of {name!r} in {path!r} must be finite, got {value}; "
                "recompute the statistics"
            )
    return values


@dataclasses.dataclass
class NormalizationConfig:
    """Where normalisation statistics come from: netCDF files or explicit values.

    Attributes:
        global_means_path: netCDF file with one scalar variable per name (means).
        global_stds_path: netCDF file with one scalar variable per name (stds).
        means: explicit means, used instead of ``global_means_path``.
        stds: explicit stds, used instead of ``global_stds_path``.
    """

    global_means_path: str | None = None
    global_stds_path: str | None = None
    means: dict[str, float] = dataclasses.field(default_factory=dict)
    stds: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        has_paths = (
            self.global_means_path is not None or self.global_stds_path is not None
        )
        if has_paths and (self.means or self.stds):
            raise ValueError(
                "normalization: give either global_means_path/global_stds_path "
                "or explicit means/stds, not both"
            )
        if has_paths and (
            self.global_means_path is None or self.global_stds_path is None
        ):
            raise ValueError(
                "normalization: global_means_path and global_stds_path go together"
            )
        if not has_paths and not (self.means and self.stds):
            raise ValueError(
                "normalization: set global_means_path and global_stds_path "
                "(or explicit means and stds)"
            )

    def load_stds(self, names: Iterable[str]) -> dict[str, float]:
        """The stds of ``names``; a clear error for a missing variable."""
        names = list(names)
        if self.global_stds_path is not None:
            return _read_scalars(self.global_stds_path, names, "stds")
        return _pick(self.stds, names, "stds")

    def load_means(self, names: Iterable[str]) -> dict[str, float]:
        """The means of ``names``; a clear error for a missing variable."""
        names = list(names)
        if self.global_means_path is not None:
            return _read_scalars(self.global_means_path, names, "means")
        return _pick(self.means, names, "means")

    def build(self, names: Iterable[str]) -> StandardNormalizer:
        """A normaliser for ``names``."""
        names = list(names)
        return _normalizer(self.load_means(names), self.load_stds(names))


def _pick(values: dict[str, float], names: list[str], role: str) -> dict[str, float]:
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"normalization {role} has no entry for {missing}")
    return {n: values[n] for n in names}


def _normalizer(means: dict[str, float], stds: dict[str, float]) -> StandardNormalizer:
    return StandardNormalizer(
        means={k: torch.tensor(v) for k, v in means.items()},
        stds={k: torch.tensor(v) for k, v in stds.items()},
    )


@dataclasses.dataclass
class NetworkAndLossNormalizationConfig:
    """ACE's ``normalization`` block: the network's and the loss's normalisers.

    Attributes:
        network: statistics the network's inputs and outputs are normalised with.
        loss: statistics the loss is computed in; defaults to ``network``.
        residual: residual (tendency) stds; when set, the loss normaliser uses
            them for prognostic variables (in both in_names and out_names), so
            the loss weighs each variable by how hard its tendency is to predict.
    """

    network: NormalizationConfig
    loss: NormalizationConfig | None = None
    residual: NormalizationConfig | None = None

    def __post_init__(self):
        if self.loss is not None and self.residual is not None:
            raise ValueError("normalization: set at most one of 'loss' and 'residual'")

    def get_network_normalizer(self, names: Iterable[str]) -> StandardNormalizer:
        """The normaliser applied around the network."""
        return self.network.build(names)

    def get_loss_normalizer(
        self, names: Iterable[str], residual_scaled_names: Iterable[str]
    ) -> StandardNormalizer:
        """The normaliser the loss is computed in (see class docstring)."""
        names = list(names)
        if self.loss is not None:
            return self.loss.build(names)
        means = self.network.load_means(names)
        stds = self.network.load_stds(names)
        if self.residual is not None:
            scaled = [n for n in residual_scaled_names if n in names]
            stds.update(self.residual.load_stds(scaled))
        return _normalizer(means, stds)
