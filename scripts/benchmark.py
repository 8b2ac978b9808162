"""Time training steps and record peak memory; print a table.

Every case runs in a fresh subprocess (so its peak RSS is its own) that trains
with the real entry point (``fme.ace.train.main.run_training``) and times
``TrainStepper.train_on_batch`` from the outside: s/step is the median wall
time between the starts of consecutive optimiser steps (data loading
included) after a warm-up. Run it on a quiet machine.

Cases (``--cases``, comma-separated):

- ``startup``: seconds from launching ``python`` to the first training batch
  (imports and config validation included) on a tiny config, next to the floor
  ``python -c "import torch, xarray"`` (timed to the end of its imports, not
  to the interpreter's exit), and what building one ``torch.optim`` optimiser
  would add to it (its first use imports ``torch._dynamo``; the default
  Adam/AdamW, ``fme.core.fused_adam``, does not), repeats interleaved.
- ``speed``: steady-state s/step, samples/s and peak RSS on tiny ACE-format data
  with ``SphericalFourierNeuralOperatorNet`` (embed_dim 16, 2 layers) and the
  dry-air corrector. With ``--reference-python`` (a separate virtualenv with
  the released ``fme==2026.10.0``) the same case runs there through
  ``scripts/reference_ace_benchmark.py``, interleaved with ours in every
  repeat, and the ratios of each side's fastest run are printed.
- ``noise_sfno``: the same data with ``NoiseConditionedSFNO`` (ACE2S, embed_dim
  16, noise_embed_dim 8) trained with ``EnsembleLoss`` (CRPS 0.9 + energy
  score 0.1) and ``n_ensemble: 2``; with ``--reference-python`` also in the
  released package, interleaved as in ``speed``, printing the ratio.
- ``corrector_loss``: the shallow-water case with corrector loss off,
  pre-corrector, regularisation, and both.
- ``data_parallel``: samples/s with 1 process and with ``torchrun`` 2
  processes, one thread each, same global batch.
- ``zarr_loader``: samples/s of the training data loader alone (shuffled
  windows of 2 times, batch 4, 2 workers) on a zarr store of 10 variables on a
  64x128 grid, chunked one time per chunk; streamed and cached here, and with
  ``--reference-python`` the released package's loader on the same store
  (``scripts/reference_zarr_loader_benchmark.py``).
- ``long_inference``: peak RSS and s/step of ``python -m fme.ace.inference``
  rollouts of 40 and 4000 steps (``forward_steps_in_memory: 40``, SFNO 16x2 on
  32x64 ACE-format data, prediction files off, monthly means on).
- ``growth``: how the network's training step (SFNO 32x2 dhconv forward,
  backward and Adam step on random data, no data loading) scales: s/step and
  step memory (peak RSS of the steps minus the RSS before the first) for batch
  1/4/16 on 32x64 and for 32x64 / 64x128 / 180x360 at batch 4, each size in
  its own process, sizes interleaved over ``--repeats`` rounds; prints the
  fitted exponents (batch 16 vs 4, grid 64x128 vs 32x64).
- ``plots``: wall time of whole 4-step runs (``python -m fme.ace.train``) with
  and without the end-of-run training plots (``plot_training``).
- ``ace2_size``: ACE2's network (SFNO dhconv, 384 channels, ``--ace2-layers``
  layers, 8 in ACE2) on 180x360, batch 1, one training step (forward,
  backward, Adam) in ``scripts/ace2_size_step.py``: ours (with the default and
  the system allocator) and, with ``--reference-python``, the released
  package's network built from the same builder config, each in its own
  process, interleaved; prints s/step, peak RSS and the ratios.
- ``compile``: the ``speed`` case eager and with ``stepper_training.compile``
  (s/step after warm-up, and the warm-up time that includes compiling).
- ``contention``: the ``speed`` case alone and beside one core-bound process
  (``python -c "while True: pass"``), interleaved; prints the ratio.

The training cases run with the entry points' thread policy and allocator
settings (``fme.core.process_resources``), one thread per process.

Usage::

    python scripts/benchmark.py --out runs/benchmark
    python scripts/benchmark.py --cases speed --reference-python /path/venv/bin/python
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmark_cases.ace2_size import ace2_size_case
from benchmark_cases.common import (
    OPTIMIZER_FLOOR,
    REPO,
    best,
    import_floor,
    reference_run,
    row,
    run_case,
    training_worker,
)
from benchmark_cases.configs import ace_format_config, shallow_water_config
from benchmark_cases.growth import growth_case, growth_worker
from benchmark_cases.inference import inference_worker, long_inference_case
from benchmark_cases.loader import loader_worker, zarr_loader_case
from benchmark_cases.training import compile_case, contention_case, plots_case

ALL_CASES = (
    "startup",
    "speed",
    "noise_sfno",
    "corrector_loss",
    "data_parallel",
    "zarr_loader",
    "long_inference",
    "growth",
    "plots",
    "ace2_size",
    "compile",
    "contention",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--growth", nargs=4, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--loader-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inference-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(ALL_CASES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark")
    parser.add_argument("--reference-python", default=None)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per case; the fastest counts"
    )
    parser.add_argument(
        "--ace2-layers",
        type=int,
        default=8,
        help="SFNO layers of the ace2_size case (ACE2 has 8; fewer to fit memory)",
    )
    parser.add_argument(
        "--ace2-steps", type=int, default=2, help="timed steps of the ace2_size case"
    )
    args = parser.parse_args(argv)
    workers = (args.worker, args.growth, args.loader_worker, args.inference_worker)
    if any(w is not None for w in workers):
        # a worker is one of our processes: started as our entry points are
        from fme.core.process_resources import restart_with_huge_pages

        restart_with_huge_pages()
    if args.worker is not None:
        training_worker(args.worker)
        return
    if args.growth is not None:
        growth_worker(*args.growth)
        return
    if args.loader_worker is not None:
        loader_worker(args.loader_worker)
        return
    if args.inference_worker is not None:
        inference_worker(args.inference_worker)
        return
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in ALL_CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; allowed: {list(ALL_CASES)}")
    if "ace2_size" in cases:
        _, rows = ace2_size_case(
            args.reference_python,
            repeats=args.repeats,
            layers=args.ace2_layers,
            steps=args.ace2_steps,
        )
        print("| case | s/step | steps/s | peak RSS (MB) |\n|---|---|---|---|")
        print("\n".join(rows))
        cases = [c for c in cases if c != "ace2_size"]
        if not cases:
            return
    if "growth" in cases:
        growth_case(repeats=args.repeats)
        cases = [c for c in cases if c != "growth"]
        if not cases:
            return
    sys.path.insert(0, str(REPO))
    from fme.ace.data.ace_format_fixture import write_ace_format_dataset
    from fme.ace.data.shallow_water import generate_shallow_water_dataset

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fme-benchmark-"))
    lines = ["| case | s/step | samples/s | peak RSS (MB) |", "|---|---|---|---|"]
    results: dict[str, Any] = {}
    steps, warmup = args.steps, args.warmup

    if "startup" in cases or "plots" in cases:
        tiny = generate_shallow_water_dataset(work / "sw_tiny", preset="tiny")
    if "plots" in cases:
        results["plots"], plots_row = plots_case(tiny, work, args.repeats)
        lines.append(plots_row)
    if "startup" in cases:
        config = shallow_water_config(tiny, work / "startup", None)
        # interleaved, so that a busy spell of the machine hits all three alike
        floors, with_optimizers, startups = [], [], []
        for i in range(args.repeats):
            floors.append(import_floor())
            with_optimizers.append(import_floor(OPTIMIZER_FLOOR))
            run = run_case(config, work, f"startup{i}", steps=1, warmup=0)
            startups.append(run["startup_s"])
        floor, with_optimizer, startup = (
            min(floors),
            min(with_optimizers),
            min(startups),
        )
        results["startup"] = {
            "startup_s": startup,
            "import_floor_s": floor,
            "optimizer_floor_s": with_optimizer,
        }
        lines.append(
            f"| startup to first batch: {startup:.2f} s (floor `import torch, xarray`: "
            f"{floor:.2f} s, overhead {startup - floor:+.2f} s; building a "
            f"torch.optim optimiser would add {with_optimizer - floor:+.2f} s) "
            "| | | |"
        )

    def released_run(builder: str) -> dict[str, Any]:
        """One run of the tiny ACE-format case in the released package."""
        assert args.reference_python is not None
        return reference_run(
            args.reference_python,
            work / "ace",
            work,
            steps=steps,
            warmup=warmup,
            batch_size=4,
            builder=builder,
        )

    if "speed" in cases or "noise_sfno" in cases:
        # one dataset for both cases, read by both implementations
        ace_data = write_ace_format_dataset(
            work / "ace", n_lat=32, n_lon=64, n_levels=2, n_times=400, seed=0
        )
    if "speed" in cases:
        streamed_config = ace_format_config(
            ace_data, work / "speed", 4, cache_in_memory=False
        )
        cached_config = ace_format_config(ace_data, work / "speed_cached", 4)
        streamed_runs, cached_runs, reference_runs = [], [], []
        # interleaved, so drifts in load hit all three; each side's best run
        for r in range(args.repeats):
            streamed_runs.append(
                run_case(streamed_config, work, f"speed{r}", steps=steps, warmup=warmup)
            )
            cached_runs.append(
                run_case(cached_config, work, f"cached{r}", steps=steps, warmup=warmup)
            )
            if args.reference_python:
                reference_runs.append(released_run("SphericalFourierNeuralOperatorNet"))
        ours, cached = best(streamed_runs), best(cached_runs)
        results["speed"] = {"fme": ours, "fme_cached": cached}
        lines.append(
            row("ACE-format 32x64, SFNO 16x2, dry-air corrector, streamed", ours)
        )
        lines.append(row("same, data cached in memory", cached))
        if args.reference_python:
            ref = best(reference_runs)
            results["speed"]["reference"] = ref
            lines.append(row(f"same, streamed, released {ref['impl']}", ref))
            lines.append(
                f"| streamed vs released: speed-up "
                f"{ref['s_per_step'] / ours['s_per_step']:.2f}x, memory ratio "
                f"{ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f} | | | |"
            )
    if "noise_sfno" in cases:
        noise_config = ace_format_config(
            ace_data,
            work / "noise_sfno",
            4,
            cache_in_memory=False,
            builder="NoiseConditionedSFNO",
        )
        noise_runs, noise_reference_runs = [], []
        for r in range(args.repeats):  # interleaved; each side's best run
            noise_runs.append(
                run_case(noise_config, work, f"noise{r}", steps=steps, warmup=warmup)
            )
            if args.reference_python:
                noise_reference_runs.append(released_run("NoiseConditionedSFNO"))
        noise = best(noise_runs)
        results["noise_sfno"] = {"fme": noise}
        lines.append(
            row(
                "NoiseConditionedSFNO 16x2, EnsembleLoss, n_ensemble 2, streamed", noise
            )
        )
        if args.reference_python:
            ref = best(noise_reference_runs)
            results["noise_sfno"]["reference"] = ref
            lines.append(row(f"same, released {ref['impl']}", ref))
            lines.append(
                f"| NoiseConditionedSFNO vs released: speed-up "
                f"{ref['s_per_step'] / noise['s_per_step']:.2f}x | | | |"
            )
    if "corrector_loss" in cases:
        variants = {
            "off": None,
            "pre-corrector": {"precorrector_optimization": {}},
            "regularisation": {"regularization": {"weight": 1.0}},
            "both": {
                "precorrector_optimization": {},
                "regularization": {"weight": 1.0},
            },
        }
        results["corrector_loss"] = {}
        shallow_water = generate_shallow_water_dataset(work / "sw", preset="default")
        configs = {
            name: shallow_water_config(shallow_water, work / f"cl_{name}", loss)
            for name, loss in variants.items()
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for r in range(args.repeats):  # interleaved, so drifts in load hit all
            for name, config in configs.items():
                runs[name].append(
                    run_case(config, work, f"cl_{name}{r}", steps=steps, warmup=warmup)
                )
        for name in variants:
            result = best(runs[name])
            results["corrector_loss"][name] = result
            lines.append(row(f"shallow water 32x64, corrector loss {name}", result))
    if "data_parallel" in cases:
        data = write_ace_format_dataset(
            work / "ace_dp", n_lat=32, n_lon=64, n_levels=2, n_times=400, seed=0
        )
        # compute-bound enough that processes, not memory bandwidth, limit it
        config = ace_format_config(
            data, work / "dp", 16, embed_dim=64, operator_type="dhconv"
        )
        one = run_case(config, work, "dp1", steps=steps, warmup=warmup, nproc=1)
        two = run_case(config, work, "dp2", steps=steps, warmup=warmup, nproc=2)
        results["data_parallel"] = {"1": one, "2": two}
        lines.append(
            row("data parallel, 1 process x 1 thread, SFNO 64x2 dhconv, batch 16", one)
        )
        lines.append(
            row(
                "data parallel, 2 processes x 1 thread, SFNO 64x2 dhconv, batch 16", two
            )
        )
        lines.append(
            f"| data-parallel speed-up {two['samples_per_s'] / one['samples_per_s']:.2f}x | | | |"
        )
    if "zarr_loader" in cases:
        results["zarr_loader"], rows = zarr_loader_case(
            work, args.repeats, args.reference_python
        )
        lines.extend(rows)
    if "compile" in cases:
        results["compile"], rows = compile_case(
            work, repeats=args.repeats, steps=steps, warmup=warmup
        )
        lines.extend(rows)
    if "contention" in cases:
        results["contention"], rows = contention_case(
            work, repeats=args.repeats, steps=steps, warmup=warmup
        )
        lines.extend(rows)
    if "long_inference" in cases:
        results["long_inference"], rows = long_inference_case(work)
        lines.extend(rows)
    table = "\n".join(lines)
    print(table)
    (args.out / "benchmark.md").write_text(table + "\n")
    (args.out / "benchmark.json").write_text(json.dumps(results, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
