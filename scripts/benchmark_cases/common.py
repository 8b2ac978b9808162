"""Shared pieces of the benchmark cases: workers, subprocesses, result rows."""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# every worker runs as ``python scripts/benchmark.py --<worker> ...``
BENCHMARK_SCRIPT = REPO / "scripts" / "benchmark.py"


class Stop(Exception):
    """Raised from the timed method once enough steps ran."""


def training_worker(spec_path: Path) -> None:
    """Train the spec's config, timing optimiser steps; print one JSON line."""

    from fme.ace.stepper.train_stepper import TrainStepper
    from fme.ace.train.config import TrainConfig
    from fme.ace.train.main import run_training
    from fme.core.config_loading import from_dict_strict
    from fme.core.process_resources import configure_process

    spec = json.loads(spec_path.read_text())
    configure_process()
    config = from_dict_strict(TrainConfig, spec["config"])
    n_total = spec["warmup"] + spec["steps"]
    starts: list[float] = []
    original = TrainStepper.train_on_batch

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        starts.append(time.perf_counter())
        if len(starts) == 1:
            first_batch_wall[0] = time.time()
        if len(starts) > n_total:
            raise Stop
        return original(self, *args, **kwargs)

    first_batch_wall = [0.0]
    TrainStepper.train_on_batch = timed  # type: ignore[method-assign]
    try:
        run_training(config)
    except Stop:
        pass
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        return
    timed_starts = starts[spec["warmup"] : n_total + 1]
    intervals = sorted(
        b - a for a, b in zip(timed_starts[:-1], timed_starts[1:], strict=True)
    )
    # the median is robust to the odd step slowed by the host or the collector
    s_per_step = intervals[len(intervals) // 2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = config.train_loader.batch_size
    result = {
        "s_per_step": s_per_step,
        "s_per_step_mean": (timed_starts[-1] - timed_starts[0]) / len(intervals),
        "samples_per_s": global_batch / s_per_step,
        "peak_rss_mb": own_peak_rss_mb(),
        "first_batch_wall": first_batch_wall[0],
        # the warm-up steps, compiling included with stepper_training.compile
        "warmup_s": timed_starts[0] - starts[0],
        "world_size": world,
    }
    print("BENCHMARK_RESULT " + json.dumps(result), flush=True)


def own_peak_rss_mb() -> float:
    """This process's peak RSS since its exec (``VmHWM``).

    ``ru_maxrss`` is not used here: on Linux it survives ``exec`` and so can
    report the memory of the parent that forked this worker.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def subprocess_json(
    command: list[str], name: str, *, reference: bool = False
) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    if reference:  # the released package must not see this repository
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir() if reference else None,
    )
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("BENCHMARK_RESULT ") or line.startswith("{")
    ]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"case {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("BENCHMARK_RESULT "))


def run_case(
    config: dict[str, Any],
    work: Path,
    name: str,
    *,
    steps: int,
    warmup: int,
    threads: int = 1,
    nproc: int = 1,
) -> dict[str, Any]:
    spec_path = work / f"{name}.json"
    spec_path.write_text(
        json.dumps(
            {"config": config, "steps": steps, "warmup": warmup, "threads": threads}
        )
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "FME_NUM_THREADS": str(threads),
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(REPO),
    }
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
        ]
    command = launcher + [str(BENCHMARK_SCRIPT), "--worker", str(spec_path)]
    launched = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("BENCHMARK_RESULT ")
    ]
    if result.returncode != 0 or not lines:
        raise RuntimeError(
            f"case {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    out = json.loads(lines[-1].split(" ", 1)[1])
    out["startup_s"] = out.pop("first_batch_wall") - launched
    return out


def whole_run_seconds(config: dict[str, Any], path: Path) -> float:
    """Wall seconds of ``python -m fme.ace.train`` on ``config``, start to exit."""
    import yaml

    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "FME_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = str(REPO)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fme.ace.train", str(path)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated runs, with the largest peak memory of them all."""
    best = dict(min(runs, key=lambda r: r["s_per_step"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["repeats"] = len(runs)
    return best


IMPORT_FLOOR = "import torch, xarray"
# What building one torch.optim optimiser adds: its first use imports
# torch._dynamo (1.5-3 s here). The default Adam/AdamW of a training run
# (fme.core.fused_adam) runs the same fused kernels without it.
OPTIMIZER_FLOOR = (
    IMPORT_FLOOR + "; torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])"
)


def import_floor(code: str = IMPORT_FLOOR) -> float:
    """Wall seconds from launching ``python -c code`` to the end of ``code``.

    Timed to the same kind of point as the start-up case (a moment inside the
    process, read with ``time.time``), so that neither includes the
    interpreter's exit (tearing down torch's modules takes 0.3-0.7 s here).
    """
    script = f"{code}\nimport time\nprint('FLOOR_END', time.time())"
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # as the start-up run
    )
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("FLOOR_END ")]
    return float(line.split()[1]) - start


def reference_run(
    python: str,
    data_dir: Path,
    work: Path,
    *,
    steps: int,
    warmup: int,
    batch_size: int,
    builder: str = "SphericalFourierNeuralOperatorNet",
) -> dict[str, Any]:
    out = work / f"reference_{builder}"
    command = [
        python,
        str(REPO / "scripts" / "reference_ace_benchmark.py"),
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--batch-size",
        str(batch_size),
        "--n-forward-steps",
        "2",
        "--threads",
        "1",
        "--builder",
        builder,
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"reference failed:\n{result.stderr[-4000:]}")
    result = json.loads((out / "result.json").read_text())
    # compare medians on both sides
    result["s_per_step"] = result["s_per_step_median"]
    result["samples_per_s"] = batch_size / result["s_per_step"]
    return result


def row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['s_per_step']:.4f} | {r['samples_per_s']:.1f} | "
        f"{r['peak_rss_mb']:.0f} |"
    )
