"""Time the released ``fme`` (``fme==2026.10.0``) data loader alone on a zarr store.

The reference half of the ``zarr_loader`` case of ``scripts/benchmark.py``.
It must run with a separate virtualenv that has the released package, never
with this repository's environment::

    REF_VENV/bin/python scripts/reference_zarr_loader_benchmark.py \\
        --data-path DIR --file-pattern store.zarr --names a,b,c \\
        --batch-size 4 --n-timesteps 2 --workers 2 --batches 60 --warmup 5

It builds the released ``DataLoaderConfig`` (``engine: zarr``, shuffled, as for
training) through ``fme.ace.data_loading.getters.get_gridded_data`` and
iterates its loader, touching every tensor. ``samples_per_s`` is the number of
samples after the first ``--warmup`` batches divided by the wall time they
took. One JSON line goes to stdout.
"""

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--file-pattern", required=True)
    parser.add_argument("--names", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-timesteps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import torch
    from fme.ace.data_loading.config import DataLoaderConfig
    from fme.ace.data_loading.getters import get_gridded_data
    from fme.ace.requirements import DataRequirements
    from fme.core.dataset.xarray import XarrayDataConfig

    torch.set_num_threads(1)
    config = DataLoaderConfig(
        dataset=XarrayDataConfig(
            data_path=args.data_path, file_pattern=args.file_pattern, engine="zarr"
        ),
        batch_size=args.batch_size,
        num_data_workers=args.workers,
        prefetch_factor=2 if args.workers else None,
    )
    requirements = DataRequirements(
        names=args.names.split(","), n_timesteps=args.n_timesteps
    )
    data = get_gridded_data(config, train=True, requirements=requirements)
    start = None
    n_samples = 0
    for i, batch in enumerate(data.loader):
        total = sum(float(v.sum()) for v in batch.data.values())
        assert total == total
        if i == args.warmup:
            start = time.perf_counter()
        elif i > args.warmup:
            n_samples += args.batch_size
        if i >= args.warmup + args.batches:
            break
    assert start is not None
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "impl": "fme==2026.10.0",
                "samples_per_s": n_samples / elapsed,
                "n_samples": n_samples,
            }
        )
    )


if __name__ == "__main__":
    main()
