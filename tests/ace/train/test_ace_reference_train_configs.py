"""ACE's documented train config and its ERA5 ACE2S pretraining config train end to end.

Each config is loaded strictly as written in ``tests/ace/reference_configs``
and run by ``run_training`` on tiny data (8 x 16 grid, a few 6-hourly times)
holding exactly the variables it names: netCDF files for the documented
config (a ``concat`` of ten runs), zarr stores for the ERA5 config (``concat``
of time subsets, inline inference from eight start times, histogram and a
time-mean reference file).

Changed keys, and why:

- paths (``data_path``, statistics files, ``time_mean_reference_data``,
  ``experiment_dir``). The ERA5 config reads one store through three time
  subsets; here each ``concat`` entry's ``data_path`` points at a directory
  holding a store of that same name with only a few times inside its subset,
  since the real store holds 85 years.
- run length, for CI time: ``max_epochs`` (1), the inline inference's
  ``n_forward_steps`` (4 instead of 7300), ``start_indices.interval`` of the
  documented config (2 instead of 1460 steps: four starts a year apart need
  four years of data), the ERA5 ``batch_size`` of validation (4 instead of
  64), ``num_data_workers`` (0: worker processes cost seconds to start on a
  2-core CI machine; ``prefetch_factor``, which needs workers in ACE as here,
  goes with them), ``logging.log_to_wandb`` (false: no network).
- network width, because a CI run must take seconds, not minutes: the
  documented SFNO (``embed_dim`` 384, 8 layers) and the ERA5
  NoiseConditionedSFNO (``embed_dim`` 512, 8 layers) run with ``embed_dim``
  16 and 2 layers; every other network key (operator, filter, noise,
  normalisation, spectral layers...) stays as written.
- everything else stays as written, e.g. the ERA5 ``optimization.kwargs``
  (``fused: true`` goes to torch's AdamW, which has a fused CPU kernel).
"""

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ace_reference_data import config_names, six_hourly, write_data, write_stats

from fme.ace.train.config import TrainConfig
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict

CONFIGS = Path(__file__).resolve().parents[1] / "reference_configs"
SMALL_NETWORK = {"embed_dim": 16, "num_layers": 2}


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _epoch_records(experiment_dir: Path) -> list[dict]:
    lines = (experiment_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "train/mean/loss" in r]


def _assert_finite_checkpoint(path: Path, *, embed_dim: int) -> dict:
    state = load_checkpoint(path)
    module = state["trainable"]["stepper"]["module"]
    assert module, f"{path} holds no network weights"
    for name, value in module.items():
        assert torch.isfinite(value).all(), f"{name} in {path} is not finite"
    widths = {v.shape[0] for k, v in module.items() if k.endswith("encoder.0.weight")}
    assert widths == {embed_dim}
    return state


def _set_normalization(step: dict, stats: dict[str, Path], second: str) -> None:
    step["normalization"]["network"] = {
        "global_means_path": str(stats["centering"]),
        "global_stds_path": str(stats["full_field"]),
    }
    step["normalization"][second] = {
        "global_means_path": str(stats["centering"]),
        "global_stds_path": str(stats["residual"]),
    }


def test_ace_documented_train_config_trains_end_to_end(tmp_path):
    data = _load("train-config.yaml")
    original = copy.deepcopy(data)
    names = config_names(data)
    # ten runs of 3 times each (2 samples of 2 times per run)
    for i, entry in enumerate(data["train_loader"]["dataset"]["concat"]):
        entry["data_path"] = str(tmp_path / f"traindata/ic_{i + 1:04d}")
        write_data(
            Path(entry["data_path"]) / "data.nc",
            names,
            six_hourly(f"{2000 + i}-01-01", 3),
            engine="netcdf",
            seed=i,
        )
    # validation: subset step 5 of 80 samples = one batch of 16
    validation = tmp_path / "validation"
    ds = write_data(
        validation / "data.nc", names, six_hourly("2010-01-01", 81), engine="netcdf"
    )
    stats = write_stats(tmp_path / "stats", ds, names)
    data["experiment_dir"] = str(tmp_path / "train_output")
    data["validation"]["loader"]["dataset"]["data_path"] = str(validation)
    step = data["stepper"]["step"]["config"]
    _set_normalization(step, stats, "loss")
    block = data["inference"][0]
    block["loader"]["dataset"]["data_path"] = str(validation)
    block["n_forward_steps"] = 4
    block["loader"]["start_indices"]["interval"] = 2
    data["max_epochs"] = 1
    for loader in (data["train_loader"], data["validation"]["loader"], block["loader"]):
        loader["num_data_workers"] = 0
        loader.pop("prefetch_factor", None)  # ACE, too, refuses it without workers
    step["builder"]["config"].update(SMALL_NETWORK)
    config = from_dict_strict(TrainConfig, data, path="config")
    # nothing else was changed
    assert original["stepper"]["step"]["config"]["corrector"] == step["corrector"]
    assert original["stepper_training"] == data["stepper_training"]

    run_training(config)

    out = Path(config.experiment_dir)
    checkpoints = out / "training_checkpoints"
    for name in ("ckpt.tar", "best_ckpt.tar", "best_inference_ckpt.tar"):
        _assert_finite_checkpoint(checkpoints / name, embed_dim=16)
    state = load_checkpoint(checkpoints / "ckpt.tar")
    assert state["trainer"]["epoch"] == 1
    assert "ema" in state  # validate_using_ema
    (record,) = _epoch_records(out)
    for key in ("train/mean/loss", "val/mean/loss", "inference/rmse/PRESsfc"):
        assert math.isfinite(record[key]), key
    # weight 1 (ACE's default): the inference error is the channel mean
    channel_mean = record["inference/time_mean_norm/rmse/channel_mean"]
    assert record["inference_error"] == pytest.approx(channel_mean, rel=1e-12)
    # conserve_dry_air pins the global dry-air mass of every rollout step
    dry_air = record["inference/global_mean_drift/dry_air_mass"]
    assert abs(dry_air) < 1e-4 * 1.0e5 / 9.80665


def test_era5_ace2s_pretraining_config_trains_end_to_end(tmp_path):
    data = _load("era5-ace2s-pretrain-config.yaml")
    names = config_names(data)
    store = data["train_loader"]["dataset"]["concat"][0]["file_pattern"]
    # one store per time subset of the real store, holding a few times inside it
    starts = ["1995-12-30T12:00", "2011-01-01", "2021-01-01"]
    for entry, start, i in zip(
        data["train_loader"]["dataset"]["concat"], starts, range(3), strict=True
    ):
        entry["data_path"] = str(tmp_path / f"train_{i}")
        write_data(
            Path(entry["data_path"]) / store,
            names,
            six_hourly(start, 6),
            engine="zarr",
            seed=i,
        )
    validation = tmp_path / "validation"
    write_data(validation / store, names, six_hourly("1996-01-01", 9), engine="zarr")
    data["validation"]["loader"]["dataset"]["data_path"] = str(validation)
    # inline inference from the eight start times of 1996
    inference = tmp_path / "inference"
    n_1996 = 4 * (np.datetime64("1996-11-16") - np.datetime64("1996-01-01")).astype(int)
    ds = write_data(
        inference / store, names, six_hourly("1996-01-01", n_1996 + 8), engine="zarr"
    )
    stats = write_stats(tmp_path / "statsdata", ds, names)
    block = data["inference"][0]
    block["loader"]["dataset"]["data_path"] = str(inference)
    block["aggregator"]["time_mean_reference_data"] = str(stats["time_mean"])
    block["n_forward_steps"] = 4
    data["experiment_dir"] = str(tmp_path / "results")
    step = data["stepper"]["step"]["config"]
    _set_normalization(step, stats, "residual")
    data["max_epochs"] = 1
    data["validation"]["loader"]["batch_size"] = 4
    for loader in (data["train_loader"], data["validation"]["loader"], block["loader"]):
        loader["num_data_workers"] = 0
        loader.pop("prefetch_factor", None)  # ACE, too, refuses it without workers
    data["logging"]["log_to_wandb"] = False
    step["builder"]["config"].update(SMALL_NETWORK)
    config = from_dict_strict(TrainConfig, data, path="config")

    run_training(config)

    out = Path(config.experiment_dir)
    checkpoints = out / "training_checkpoints"
    for name in ("ckpt.tar", "best_ckpt.tar", "best_inference_ckpt.tar"):
        _assert_finite_checkpoint(checkpoints / name, embed_dim=16)
    assert "ema" in load_checkpoint(checkpoints / "ckpt.tar")
    (record,) = _epoch_records(out)
    for key in ("train/mean/loss", "val/mean/loss"):
        assert math.isfinite(record[key]), key
    # histogram enabled, time-mean reference given, as the config asks
    assert math.isfinite(record["inference/time_mean_ref/rmse/h500"])
    assert any(k.startswith("inference/histogram/") for k in record)
    dry_air = record["inference/global_mean_drift/dry_air_mass"]
    assert abs(dry_air) < 1e-4 * 1.0e5 / 9.80665
    # 3 stores x 6 times, windows of 2 times: 5 samples each, batch 8 -> 1 batch
    assert record["epoch"] == 1
