"""Count-weighted means of scalar metrics, reduced correctly across ranks."""

from collections import defaultdict

import torch

from fme.core.distributed import DistributedContext


class MeanAggregator:
    """Accumulates ``sum(value * count)`` and ``sum(count)`` per metric name.

    Means are taken only at the end, after summing sums and counts over ranks,
    so unequal shards are weighted by their sample counts (no mean of means).
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, float] = defaultdict(float)

    def record(
        self, name: str, value: float | torch.Tensor, count: float = 1.0
    ) -> None:
        """Add one observation of ``name`` that stands for ``count`` samples."""
        self._sums[name] += float(value) * count
        self._counts[name] += count

    def record_all(self, values: dict[str, float], count: float = 1.0) -> None:
        """``record`` every entry of ``values``."""
        for name, value in values.items():
            self.record(name, value, count)

    def get_means(self, dist: DistributedContext | None = None) -> dict[str, float]:
        """Count-weighted means; with ``dist``, over all ranks.

        Every rank must have recorded the same metric names.
        """
        names = sorted(self._sums)
        if not names:
            return {}
        sums = torch.tensor([self._sums[n] for n in names], dtype=torch.float64)
        counts = torch.tensor([self._counts[n] for n in names], dtype=torch.float64)
        if dist is not None:
            sums = dist.reduce_sum(sums)
            counts = dist.reduce_sum(counts)
        return {n: float(s / c) for n, s, c in zip(names, sums, counts, strict=True)}

    def get_state(self) -> dict[str, dict[str, float]]:
        """Sums and counts so far (for mid-epoch checkpoints)."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state(self, state: dict[str, dict[str, float]]) -> None:
        """Restore ``get_state()`` output."""
        self._sums.update(state["sums"])
        self._counts.update(state["counts"])
