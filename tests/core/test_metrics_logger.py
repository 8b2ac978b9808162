import json

import pytest
import torch

from fme.core.distributed import DistributedContext
from fme.core.metrics_logger import WANDB_RUN_ID_FILE, LoggingConfig, MetricsLogger


def test_records_are_plain_numbers_with_step_and_epoch(tmp_path):
    logger = MetricsLogger(
        config=LoggingConfig(), experiment_dir=tmp_path, dist=DistributedContext()
    )
    logger.log({"loss": torch.tensor(2.5), "n": 3}, optimizer_step=7, epoch=1)
    logger.log({"loss": float("nan")}, optimizer_step=8, epoch=1)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {
        "loss": 2.5,
        "n": 3,
        "optimizer_step": 7,
        "epoch": 1,
    }
    assert json.loads(lines[1])["loss"] == "nan"
    with pytest.raises(TypeError, match="must be scalars"):
        logger.log({"bad": torch.ones(2)}, optimizer_step=9, epoch=1)


def test_only_rank_zero_writes(tmp_path):
    logger = MetricsLogger(
        config=LoggingConfig(), experiment_dir=tmp_path, dist=DistributedContext(rank=1)
    )
    logger.log({"loss": 1.0}, optimizer_step=1, epoch=0)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_wandb_offline_run_is_resumed_with_the_same_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = LoggingConfig(log_to_wandb=True, project="fme-test")
    first = MetricsLogger(
        config=config,
        experiment_dir=tmp_path,
        dist=DistributedContext(),
        run_config={"lr": 0.1},
    )
    first.log({"loss": 1.0}, optimizer_step=1, epoch=0)
    run_id = (tmp_path / WANDB_RUN_ID_FILE).read_text()
    first.finish()
    second = MetricsLogger(
        config=config, experiment_dir=tmp_path, dist=DistributedContext()
    )
    assert second._wandb.id == run_id
    second.log({"loss": 0.5}, optimizer_step=2, epoch=1)
    second.finish()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) >= 1
