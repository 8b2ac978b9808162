"""Run the distributed tests N times in a row and count the failing runs.

A flaky distributed test (an abort at teardown, a port taken by another
process) shows up as an occasional failed run; this script makes the rate
visible. Each repeat is a fresh ``pytest`` process over every test that starts
several processes (``mp.spawn`` gloo workers and ``torchrun``)::

    python scripts/repeat_distributed_tests.py --repeats 50
    python scripts/repeat_distributed_tests.py --repeats 50 tests/core/test_data_parallel_fine_tuning.py
    python scripts/repeat_distributed_tests.py --repeats 20 --torchrun-training CONFIG.yaml

With ``--torchrun-training CONFIG`` each repeat is instead one
``torchrun --nproc_per_node 2 -m fme.ace.train CONFIG`` run (into a fresh
experiment directory), counted as failed when it exits non-zero or prints an
abort message (``terminate called``, ``SIGABRT``, ``core dumped``).

The last line is ``failed K of N``; the exit code is 1 when any run failed.
Logs of failed runs are kept in ``--log-dir``.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DISTRIBUTED_TESTS = [
    "tests/ace/stepper/test_data_parallel_step.py",
    "tests/core/test_data_parallel_fine_tuning.py",
    "tests/ace/train/test_torchrun_training.py",
]
ABORT_MARKERS = ("terminate called", "SIGABRT", "core dumped", "Aborted")


def _pytest_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _torchrun_command(config: Path, experiment_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fme.ace.train",
        str(config),
        "--override",
        f"experiment_dir={experiment_dir}",
    ]


def _failed(result: subprocess.CompletedProcess) -> bool:
    output = result.stdout + result.stderr
    return result.returncode != 0 or any(m in output for m in ABORT_MARKERS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tests",
        nargs="*",
        default=DISTRIBUTED_TESTS,
        help="test files to repeat (default: every distributed test)",
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument(
        "--torchrun-training",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="repeat a 2-process torchrun training run of CONFIG instead",
    )
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="distributed-repeats-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    failures = 0
    for repeat in range(1, args.repeats + 1):
        if args.torchrun_training is not None:
            command = _torchrun_command(
                args.torchrun_training, log_dir / f"run{repeat}"
            )
        else:
            command = _pytest_command() + list(args.tests)
        start = time.perf_counter()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        failed = _failed(result)
        failures += failed
        status = "FAILED" if failed else "passed"
        if failed:
            log = log_dir / f"failed-{repeat}.log"
            log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
            status += f" (log: {log})"
        print(f"run {repeat}/{args.repeats}: {status} in {seconds:.0f} s", flush=True)
    print(f"failed {failures} of {args.repeats}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
