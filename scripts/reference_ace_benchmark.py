"""Time the released ``fme`` (AI2's ACE, PyPI ``fme==2026.10.0``) on tiny data.

This is the *reference* half of the speed/memory comparison in
``scripts/benchmark.py``. It must run with a separate virtualenv that has the
released package installed, never with this repository's environment::

    python3.11 -m venv REF_VENV
    REF_VENV/bin/pip install torch==2.13.0
    printf 'torch==2.13.0\\ntorch-harmonics==0.8.0\\n' > ref-constraints.txt
    REF_VENV/bin/pip install -c ref-constraints.txt fme==2026.10.0

    python -m fme.ace.data.ace_format_fixture --out ACE_DATA \\
        --n-lat 32 --n-lon 64 --n-levels 2 --n-times 400   # this project's venv
    REF_VENV/bin/python scripts/reference_ace_benchmark.py \\
        --data ACE_DATA --out OUT --steps 30 --batch-size 4 \\
        --n-forward-steps 2 --threads 1

The script writes a released-fme training YAML (``OUT/train.yaml``) for the
ACE-format data in ``--data`` -- either the layout of
``fme.ace.data.ace_format_fixture`` (``DIR/data/*.nc`` and ``DIR/stats/`` with
``centering.nc``, ``scaling-full-field.nc`` and optionally
``scaling-residual.nc``, used as the loss's residual scaling) or one directory
holding both -- with the variable roles the fixture wrote
(``ACE_DATA/variable_roles.json``; for other data name the forcing and
diagnostic variables with ``--forcing-names`` and ``--diagnostic-names``, the
rest are prognostic), runs the released trainer in this process
(``fme.ace.train.train.main``), and times it by wrapping the released
``TrainStepper.train_on_batch``:

- ``s_per_step``: mean wall time between the starts of consecutive optimised
  ``train_on_batch`` calls after ``--warmup`` steps, i.e. one full iteration of
  the released training loop (data loading, forward/backward over the rollout,
  optimiser step, EMA update, scheduler, metric bookkeeping).
- ``peak_rss_mb``: this process's peak RSS (``VmHWM``) when training stops.
- ``startup_s``: wall time from this script's first line (before torch and fme
  are imported) to the start of the first optimised step.

By default the run stops at the start of optimiser step ``warmup + steps + 1``,
so the end-of-epoch train evaluation and validation never run;
``--complete-epoch`` lets the epoch finish instead. One JSON line goes to
stdout and ``OUT/result.json``.

The data are read as written (``scripts/benchmark.py`` writes them with this
project's venv); the script does not generate any, since the fixture's module
imports this project's package, which the released venv does not have.
"""

import time

_SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmark_cases.common import own_peak_rss_mb  # noqa: E402

REFERENCE_VERSION = "2026.10.0"
STATS_FILES = ("centering.nc", "scaling-full-field.nc", "scaling-residual.nc")
ROLES_FILE = "variable_roles.json"  # as fme.ace.data.ace_format_fixture writes


class _StopBenchmark(Exception):
    """Raised from the timing hook once enough optimiser steps were timed."""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="ACE data: DIR/data/*.nc + DIR/stats/*.nc, or one dir with both",
    )
    parser.add_argument(
        "--stats-dir", type=Path, default=None, help="stats dir if elsewhere"
    )
    parser.add_argument("--out", type=Path, required=True, help="output dir")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--n-forward-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument(
        "--data-grid",
        choices=("legendre-gauss", "equiangular"),
        default="legendre-gauss",
        help="SFNO data_grid key (released default: legendre-gauss)",
    )
    parser.add_argument(
        "--operator-type",
        choices=("diagonal", "dhconv"),
        default="diagonal",
        help="SFNO operator_type (released default: diagonal)",
    )
    parser.add_argument(
        "--builder",
        choices=("SphericalFourierNeuralOperatorNet", "NoiseConditionedSFNO"),
        default="SphericalFourierNeuralOperatorNet",
        help="network; NoiseConditionedSFNO trains with EnsembleLoss, n_ensemble 2",
    )
    parser.add_argument(
        "--use-gradient-accumulation",
        action="store_true",
        help="optimization.use_gradient_accumulation (released default: false)",
    )
    parser.add_argument("--num-data-workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--forcing-names",
        nargs="*",
        default=None,
        help=f"input-only variables (default: from DATA/{ROLES_FILE})",
    )
    parser.add_argument(
        "--diagnostic-names",
        nargs="*",
        default=None,
        help=f"output-only variables (default: from DATA/{ROLES_FILE})",
    )
    parser.add_argument(
        "--complete-epoch",
        action="store_true",
        help="let the epoch finish (train eval + validation) instead of stopping",
    )
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "n_forward_steps", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def _set_thread_env(threads: int) -> None:
    # Must happen before torch is imported so OpenMP/MKL pools honour it.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["WANDB_MODE"] = "disabled"
    os.environ.setdefault("WANDB_SILENT", "true")


# ---------------------------------------------------------------------------
# Data layout.
# ---------------------------------------------------------------------------


def _resolve_layout(data: Path, stats_dir: Path | None) -> tuple[Path, Path]:
    """Return ``(data_dir, stats_dir)`` for ``--data`` and ``--stats-dir``.

    Accepts the fixture's layout (``DIR/data/*.nc`` and ``DIR/stats/*.nc``) or
    one directory holding both the data files and the stats files.
    """
    data = data.resolve()
    data_dir = data / "data" if (data / "data").is_dir() else data
    if stats_dir is None:
        stats_dir = data / "stats" if (data / "stats").is_dir() else data_dir
    return data_dir, stats_dir.resolve()


# ---------------------------------------------------------------------------
# Config for the released fme.
# ---------------------------------------------------------------------------


def _data_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*.nc") if p.name not in STATS_FILES)


def _stage_data(data_dir: Path, out_dir: Path) -> Path:
    """Symlink the data files (not the stats files) into their own directory.

    The released loader globs ``data_path/*.nc`` and would otherwise try to
    read ``centering.nc`` etc. as time series.
    """
    files = _data_files(data_dir)
    if not files:
        raise ValueError(f"no data *.nc files (besides stats files) in {data_dir}")
    staged = out_dir / "data"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(parents=True)
    for path in files:
        (staged / path.name).symlink_to(path.resolve())
    return staged


def _role_names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The forcing and diagnostic names: from the flags, else the roles file."""
    names = {"forcing": args.forcing_names, "diagnostic": args.diagnostic_names}
    if any(value is None for value in names.values()):
        path = args.data.resolve() / ROLES_FILE
        if not path.is_file():
            raise ValueError(
                f"no {path}: name the variables with --forcing-names and "
                "--diagnostic-names, or write the data with "
                "python -m fme.ace.data.ace_format_fixture"
            )
        roles = json.loads(path.read_text())
        names = {k: roles[k] if v is None else v for k, v in names.items()}
    return list(names["forcing"]), list(names["diagnostic"])


def _variable_roles(
    data_dir: Path, forcing: Sequence[str], diagnostic: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """Split the time-dependent 2D variables into prognostic/forcing/diagnostic."""
    import xarray as xr

    with xr.open_dataset(_data_files(data_dir)[0], decode_times=False) as ds:
        fields = sorted(
            str(name)
            for name, var in ds.data_vars.items()
            if var.ndim == 3 and var.dims[0] == "time"
        )
    forcing_names = [n for n in fields if n in forcing]
    diagnostic_names = [n for n in fields if n in diagnostic]
    prognostic = [n for n in fields if n not in forcing_names + diagnostic_names]
    if not prognostic:
        raise ValueError(f"no prognostic variables found among {fields}")
    return prognostic, forcing_names, diagnostic_names


def build_train_config(
    args: argparse.Namespace,
    *,
    data_dir: Path,
    stats_dir: Path,
    staged_data: Path,
    experiment_dir: Path,
) -> dict[str, Any]:
    """Return the released-fme TrainConfig as a plain (YAML-able) dict."""
    for name in STATS_FILES[:2]:
        if not (stats_dir / name).exists():
            raise ValueError(f"missing stats file {stats_dir / name}")
    prognostic, forcing, diagnostic = _variable_roles(data_dir, *_role_names(args))
    in_names = prognostic + forcing
    out_names = prognostic + diagnostic
    network_norm = {
        "global_means_path": str(stats_dir / "centering.nc"),
        "global_stds_path": str(stats_dir / "scaling-full-field.nc"),
    }
    normalization: dict[str, Any] = {"network": network_norm}
    if (stats_dir / "scaling-residual.nc").exists():
        normalization["residual"] = {
            "global_means_path": str(stats_dir / "centering.nc"),
            "global_stds_path": str(stats_dir / "scaling-residual.nc"),
        }
    dataset = {"data_path": str(staged_data), "file_pattern": "*.nc"}
    # One more optimiser step than timed: the run stops at its start, so the
    # last timed step's bookkeeping (EMA, scheduler, next batch load) counts.
    n_train_batches = args.steps + args.warmup + 1
    return {
        "experiment_dir": str(experiment_dir),
        "max_epochs": 1,
        "save_checkpoint": False,
        "seed": args.seed,
        "log_train_every_n_batches": 10,
        "train_evaluation_samples": args.batch_size,
        "logging": {
            "log_to_screen": True,
            "log_to_file": True,
            "log_to_wandb": False,
        },
        "train_loader": {
            "dataset": dataset,
            "batch_size": args.batch_size,
            "num_data_workers": args.num_data_workers,
            "sample_with_replacement": n_train_batches * args.batch_size,
        },
        "validation": {
            "loader": {
                "dataset": {**dataset, "subset": {"stop": 2 * args.batch_size}},
                "batch_size": args.batch_size,
                "num_data_workers": args.num_data_workers,
            },
        },
        "optimization": {
            "optimizer_type": "Adam",
            "lr": 1.0e-4,
            "enable_automatic_mixed_precision": False,
            "use_gradient_accumulation": args.use_gradient_accumulation,
        },
        "stepper": {
            "step": {
                "type": "single_module",
                "config": {
                    "in_names": in_names,
                    "out_names": out_names,
                    "normalization": normalization,
                    "builder": builder_config(args),
                    "corrector": {
                        "type": "atmosphere_corrector",
                        "config": {"conserve_dry_air": True},
                    },
                },
            },
        },
        "stepper_training": stepper_training_config(args),
    }


def builder_config(args: argparse.Namespace) -> dict[str, Any]:
    """The network of the benchmark, the same YAML for both implementations."""
    config: dict[str, Any] = {
        "embed_dim": args.embed_dim,
        "num_layers": args.num_layers,
        "data_grid": args.data_grid,
    }
    if args.builder == "NoiseConditionedSFNO":
        config["noise_embed_dim"] = max(1, args.embed_dim // 2)
    else:
        config["operator_type"] = args.operator_type
    return {"type": args.builder, "config": config}


def stepper_training_config(args: argparse.Namespace) -> dict[str, Any]:
    """MSE, or ACE2S's ensemble CRPS + energy score for NoiseConditionedSFNO."""
    config: dict[str, Any] = {
        "loss": {"type": "MSE"},
        "n_forward_steps": args.n_forward_steps,
    }
    if args.builder == "NoiseConditionedSFNO":
        config["n_ensemble"] = 2
        config["loss"] = {
            "type": "EnsembleLoss",
            "kwargs": {"crps_weight": 0.9, "energy_score_weight": 0.1},
        }
    return config


# ---------------------------------------------------------------------------
# Running and timing.
# ---------------------------------------------------------------------------


class _StepTimer:
    """Wraps the released ``TrainStepper.train_on_batch`` to time each call."""

    def __init__(self, *, stop_at: int | None) -> None:
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []
        self.durations: list[float] = []
        self.n_params: int | None = None
        self._stop_at = stop_at

    def install(self, train_stepper_cls: Any) -> None:
        original = train_stepper_cls.train_on_batch
        timer = self

        def timed_train_on_batch(
            stepper: Any, data: Any, optimization: Any, *args: Any, **kwargs: Any
        ) -> Any:
            # NullOptimization = the trainer's no-grad passes (first-batch log,
            # end-of-epoch evaluation); only real optimiser steps are timed.
            if type(optimization).__name__ == "NullOptimization":
                return original(stepper, data, optimization, *args, **kwargs)
            start = time.perf_counter()
            timer.cpu_starts.append(time.process_time())
            if timer._stop_at is not None and len(timer.starts) >= timer._stop_at:
                timer.starts.append(start)
                raise _StopBenchmark
            if timer.n_params is None:
                timer.n_params = sum(
                    p.numel() for m in stepper.modules for p in m.parameters()
                )
            timer.starts.append(start)
            result = original(stepper, data, optimization, *args, **kwargs)
            timer.durations.append(time.perf_counter() - start)
            return result

        train_stepper_cls.train_on_batch = timed_train_on_batch


def _check_reference_fme() -> str:
    try:
        version = importlib.metadata.version("fme")
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("fme is not installed in this interpreter") from None
    if version != REFERENCE_VERSION:
        raise SystemExit(
            f"this script measures the released fme=={REFERENCE_VERSION}; this "
            f"interpreter ({sys.executable}) has fme=={version}. Run it with the "
            "reference virtualenv's python."
        )
    return version


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return 0.5 * (ordered[mid - 1] + ordered[mid])


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Write the YAML, train with the released fme in-process, return timings."""
    version = _check_reference_fme()
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment_dir = out_dir / "experiment"
    if experiment_dir.exists():
        shutil.rmtree(experiment_dir)
    data_dir, stats_dir = _resolve_layout(args.data, args.stats_dir)
    staged = _stage_data(data_dir, out_dir)
    config = build_train_config(
        args,
        data_dir=data_dir,
        stats_dir=stats_dir,
        staged_data=staged,
        experiment_dir=experiment_dir,
    )
    yaml_path = out_dir / "train.yaml"
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))

    stepper_module = importlib.import_module("fme.ace.stepper.single_module")
    train_module = importlib.import_module("fme.ace.train.train")
    distributed = importlib.import_module("fme.core.distributed").Distributed
    # Peak RSS so far: torch plus the released package and its dependencies.
    import_rss_mb = own_peak_rss_mb()
    n_timed = args.warmup + args.steps
    timer = _StepTimer(stop_at=None if args.complete_epoch else n_timed)
    timer.install(stepper_module.TrainStepper)
    load_before = os.getloadavg()[0]
    with distributed.context():
        try:
            train_module.main(str(yaml_path))
        except _StopBenchmark:
            pass
    peak_rss_mb = own_peak_rss_mb()
    load_after = os.getloadavg()[0]

    if len(timer.starts) < n_timed + 1:
        raise RuntimeError(
            f"only {len(timer.starts)} optimiser steps ran; need {n_timed + 1}"
        )
    starts = timer.starts[args.warmup : n_timed + 1]
    intervals = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    s_per_step = (starts[-1] - starts[0]) / len(intervals)
    steady_durations = timer.durations[args.warmup : n_timed]
    cpu = timer.cpu_starts[args.warmup : n_timed + 1]
    return {
        "impl": f"fme=={version}",
        "s_per_step": s_per_step,
        "samples_per_s": args.batch_size / s_per_step,
        "peak_rss_mb": peak_rss_mb,
        "startup_s": timer.starts[0] - _SCRIPT_START,
        "import_rss_mb": import_rss_mb,
        "s_per_step_median": _median(intervals),
        # Fastest single step: a lower bound that other load cannot inflate.
        "s_per_step_min": min(intervals),
        "train_on_batch_s": sum(steady_durations) / len(steady_durations),
        "first_step_s": timer.durations[0],
        # Process CPU seconds per step: less sensitive to other processes
        # competing for the cores than wall time.
        "cpu_s_per_step": (cpu[-1] - cpu[0]) / len(intervals),
        "loadavg_1min_before_after": [load_before, load_after],
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "n_forward_steps": args.n_forward_steps,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "n_params": timer.n_params,
        "operator_type": args.operator_type,
        "builder": args.builder,
        "data_grid": args.data_grid,
        "use_gradient_accumulation": args.use_gradient_accumulation,
        "complete_epoch": args.complete_epoch,
        "torch": torch.__version__,
        "yaml": str(yaml_path),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    _set_thread_env(args.threads)
    result = run_benchmark(args)
    line = json.dumps(result)
    (args.out / "result.json").write_text(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
