"""The ``growth`` case: cost of a training step against batch and grid."""

import json
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any

from benchmark_cases.common import BENCHMARK_SCRIPT, REPO, rss_mb

GROWTH_SIZES = [
    (1, 32, 64),
    (4, 32, 64),
    (16, 32, 64),
    (4, 64, 128),
    (4, 180, 360),
]


def growth_worker(batch: int, n_lat: int, n_lon: int, steps: int) -> None:
    """Time the SFNO training step at one size; print one JSON line."""
    import torch

    from fme.ace.models.sfno_config import SphericalFourierNeuralOperatorConfig
    from fme.core.optimization import OptimizationConfig
    from fme.core.process_resources import configure_process

    configure_process()
    torch.manual_seed(0)
    channels = 4
    net = SphericalFourierNeuralOperatorConfig(
        embed_dim=32, num_layers=2, operator_type="dhconv"
    ).build(n_in_channels=channels, n_out_channels=channels, img_shape=(n_lat, n_lon))
    optimization = OptimizationConfig(optimizer_type="Adam", lr=1e-4).build(
        net.parameters()
    )
    x = torch.randn(batch, channels, n_lat, n_lon)
    target = torch.randn(batch, channels, n_lat, n_lon)

    def step() -> None:
        optimization.accumulate_loss(((net(x) - target) ** 2).mean())
        optimization.step_weights()

    # RSS before the first step: with the tuned allocator freed memory stays
    # resident, so the first step's peak is the step's memory
    before = rss_mb()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"s_per_step": sorted(times)[len(times) // 2], "step_mb": peak - before}
    print("BENCHMARK_RESULT " + json.dumps(result), flush=True)


def growth_case(*, repeats: int) -> None:
    env = {**os.environ, "FME_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs: dict[tuple[int, int, int], list[dict[str, Any]]] = {
        s: [] for s in GROWTH_SIZES
    }
    for _ in range(repeats):
        for size in GROWTH_SIZES:
            batch, n_lat, n_lon = size
            steps = 3 if n_lat * n_lon * batch > 100_000 else 10
            command = [sys.executable, str(BENCHMARK_SCRIPT), "--growth"]
            command += [str(v) for v in (batch, n_lat, n_lon, steps)]
            out = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [
                line
                for line in out.stdout.splitlines()
                if line.startswith("BENCHMARK_RESULT ")
            ]
            if out.returncode != 0 or not lines:
                raise RuntimeError(f"growth {size} failed:\n{out.stderr[-4000:]}")
            runs[size].append(json.loads(lines[-1].split(" ", 1)[1]))
    best = {
        size: {
            "s_per_step": min(r["s_per_step"] for r in rs),
            "step_mb": max(r["step_mb"] for r in rs),
        }
        for size, rs in runs.items()
    }
    print("\n| batch | grid | s/step | step memory (MB) |\n|---|---|---|---|")
    for (batch, n_lat, n_lon), r in best.items():
        print(
            f"| {batch} | {n_lat}x{n_lon} | {r['s_per_step']:.4f} | "
            f"{r['step_mb']:.0f} |"
        )

    def exponent(a: tuple[int, int, int], b: tuple[int, int, int], key: str) -> float:
        work = (b[0] * b[1] * b[2]) / (a[0] * a[1] * a[2])
        return math.log(best[b][key] / best[a][key]) / math.log(work)

    for label, a, b in [
        ("batch 16 vs 4", (4, 32, 64), (16, 32, 64)),
        ("grid 64x128 vs 32x64", (4, 32, 64), (4, 64, 128)),
        ("grid 180x360 vs 64x128", (4, 64, 128), (4, 180, 360)),
    ]:
        print(
            f"growth exponent, {label}: time {exponent(a, b, 's_per_step'):.2f}, "
            f"step memory {exponent(a, b, 'step_mb'):.2f}"
        )
