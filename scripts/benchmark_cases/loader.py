"""The ``zarr_loader`` case: the training data loader alone."""

import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmark_cases.common import BENCHMARK_SCRIPT, REPO, subprocess_json

ZARR_NAMES = [f"var_{i}" for i in range(10)]


def loader_worker(spec_path: Path) -> None:
    """Iterate this project's loader on the spec's store; print one JSON line."""
    import torch

    from fme.ace.data.loader import DataLoaderConfig, build_data_loader
    from fme.core.config_loading import from_dict_strict

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(1)
    config = from_dict_strict(DataLoaderConfig, spec["loader"])
    data = build_data_loader(
        config, names=spec["names"], n_timesteps=spec["n_timesteps"], shuffle=True
    )
    start, n_samples = 0.0, 0
    for i, batch in enumerate(data.loader):
        total = sum(float(v.sum()) for v in batch.data.values())
        assert total == total
        if i == spec["warmup"]:
            start = time.perf_counter()
        elif i > spec["warmup"]:
            n_samples += batch.batch_size
        if i >= spec["warmup"] + spec["batches"]:
            break
    elapsed = time.perf_counter() - start
    print("BENCHMARK_RESULT " + json.dumps({"samples_per_s": n_samples / elapsed}))


def write_zarr_store(directory: Path, n_times: int = 600) -> Path:
    import numpy as np
    import xarray as xr

    directory.mkdir(parents=True, exist_ok=True)
    lat = np.linspace(-89.0, 89.0, 64)
    lon = np.arange(128) * 360.0 / 128
    times = np.datetime64("2000-01-01", "ns") + np.arange(n_times) * np.timedelta64(
        6, "h"
    )
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            name: (
                ("time", "lat", "lon"),
                rng.standard_normal((n_times, 64, 128), dtype=np.float32),
            )
            for name in ZARR_NAMES
        },
        coords={"time": times, "lat": lat, "lon": lon},
    )
    path = directory / "store.zarr"
    ds.to_zarr(
        path,
        zarr_format=3,
        consolidated=False,
        encoding={name: {"chunks": (1, 64, 128)} for name in ZARR_NAMES},
    )
    return path


def zarr_loader_case(
    work: Path, repeats: int, reference_python: str | None
) -> tuple[dict[str, Any], list[str]]:
    store = write_zarr_store(work / "zarr")
    results: dict[str, Any] = {}
    rows = []
    for cache in (False, True):
        label = "cached" if cache else "streamed"
        spec = {
            "loader": {
                "dataset": {
                    "data_path": str(store.parent),
                    "file_pattern": store.name,
                    "engine": "zarr",
                    "cache_in_memory": cache,
                },
                "batch_size": 4,
                "num_data_workers": 2,
                "prefetch_factor": 2,
            },
            "names": ZARR_NAMES,
            "n_timesteps": 2,
            "warmup": 5,
            "batches": 60,
        }
        spec_path = work / f"zarr_loader_{label}.json"
        spec_path.write_text(json.dumps(spec))
        runs = [
            subprocess_json(
                [
                    sys.executable,
                    str(BENCHMARK_SCRIPT),
                    "--loader-worker",
                    str(spec_path),
                ],
                f"zarr_loader_{label}",
            )
            for _ in range(repeats)
        ]
        best = max(r["samples_per_s"] for r in runs)
        results[label] = best
        rows.append(f"| zarr loader alone, 2 workers, {label} | | {best:.1f} | |")
    if reference_python:
        command = [
            reference_python,
            str(REPO / "scripts" / "reference_zarr_loader_benchmark.py"),
            "--data-path",
            str(store.parent),
            "--file-pattern",
            store.name,
            "--names",
            ",".join(ZARR_NAMES),
            "--workers",
            "2",
        ]
        runs = [
            subprocess_json(command, "zarr_loader_reference", reference=True)
            for _ in range(repeats)
        ]
        best = max(r["samples_per_s"] for r in runs)
        results["reference"] = best
        rows.append(f"| same, released fme==2026.10.0 loader | | {best:.1f} | |")
        rows.append(
            f"| zarr loader streamed vs released: {results['streamed'] / best:.2f}x | | | |"
        )
    return results, rows
