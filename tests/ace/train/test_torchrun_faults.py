"""A rank that dies or stops responding ends a ``torchrun`` job in bounded time."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_run_builders import tiny_config, tiny_data

from fme.core.config_loading import to_dict

TIMEOUT_SECONDS = 5  # the collective timeout of these runs
# start-up, the timeout and torchrun's 30 s grace before it SIGKILLs a
# stopped process; a job still running after this is hung
JOB_BOUND_SECONDS = 150


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(c) for c in text)
    return children


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    """The pid of the worker process with ``RANK=rank`` under torchrun."""
    pending = _children(torchrun_pid)
    while pending:
        pid = pending.pop()
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            pending.extend(_children(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in (
            env
        ):
            return pid
    return None


def _start_long_job(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    data = tiny_data(tmp_path)
    experiment_dir = tmp_path / "run"
    config = tiny_config(
        data,
        experiment_dir,
        [
            "max_epochs=1000",
            "train_loader.num_data_workers=0",
            "logging.batch_log_interval=1",
            f"distributed_timeout_seconds={TIMEOUT_SECONDS}",
        ],
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fme.ace.train",
            str(path),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, experiment_dir


def _wait_until_training(process, experiment_dir: Path) -> int:
    """Wait for the first logged optimiser step; the pid of rank 1."""
    deadline = time.monotonic() + 120
    metrics = experiment_dir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)
    pid = _rank_pid(process.pid, 1)
    assert pid is not None
    return pid


def _finish(process, stopped_pid: int | None = None) -> tuple[str, float]:
    start = time.monotonic()
    try:
        output, _ = process.communicate(timeout=JOB_BOUND_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        if stopped_pid is not None:
            os.kill(stopped_pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the job hung: {output[-3000:]}")
    return output, time.monotonic() - start


def test_a_rank_that_stops_responding_ends_the_job_naming_it(tmp_path):
    process, experiment_dir = _start_long_job(tmp_path)
    pid = _wait_until_training(process, experiment_dir)
    os.kill(pid, signal.SIGSTOP)
    try:
        output, elapsed = _finish(process, stopped_pid=pid)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode != 0
    assert "rank 0 of 2: a collective did not complete: rank 1 stopped responding" in (
        output
    ), output[-3000:]
    assert f"collective timeout {TIMEOUT_SECONDS} s" in output
    assert elapsed < JOB_BOUND_SECONDS
    log = (experiment_dir / "out.log").read_text()
    assert "rank 1 stopped responding" in log


def test_a_rank_that_dies_ends_the_job_naming_it(tmp_path):
    process, experiment_dir = _start_long_job(tmp_path)
    pid = _wait_until_training(process, experiment_dir)
    os.kill(pid, signal.SIGKILL)
    output, elapsed = _finish(process)
    assert process.returncode != 0
    # torchrun's summary names the dead rank as the root cause
    root_cause = output[output.index("Root Cause") :]
    assert "rank      : 1 (local_rank: 1)" in root_cause, output[-3000:]
    assert "Signal 9 (SIGKILL)" in root_cause
    assert elapsed < JOB_BOUND_SECONDS
