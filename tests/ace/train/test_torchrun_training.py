"""``torchrun --nproc_per_node 2`` training equals one process and resumes."""

import json
import os
import subprocess
import sys

import torch
import yaml
from train_run_builders import REPO, tiny_config, tiny_data

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.train.config import load_train_config
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import to_dict


def _write_config(path, config):
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def _run(args, *, expect_success=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if expect_success:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _torchrun(config_path, *overrides, expect_success=True):
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fme.ace.train",
            str(config_path),
            "--override",
            *overrides,
        ],
        expect_success=expect_success,
    )


def _weights(experiment_dir):
    state = load_checkpoint(experiment_dir / "training_checkpoints" / "ckpt.tar")
    return state["trainable"]["stepper"]["module"], state


def _train_one_and_two_processes(tmp_path, data, extra):
    """Train ``tiny_config`` in one process and with torchrun in two.

    The runs go to ``tmp_path / "single"`` and ``tmp_path / "multi"``.

    Returns:
        The config path of the two-process run.
    """
    single = _write_config(
        tmp_path / "single.yaml", tiny_config(data, tmp_path / "single", extra)
    )
    multi = _write_config(
        tmp_path / "multi.yaml", tiny_config(data, tmp_path / "multi", extra)
    )
    _run([sys.executable, "-m", "fme.ace.train", str(single)])
    _torchrun(multi)
    return multi


def test_torchrun_two_processes_equal_one_process_and_resume(tmp_path):
    data = tiny_data(tmp_path)
    extra = ["max_steps=2", "train_loader.num_data_workers=0"]
    single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
    multi = _train_one_and_two_processes(tmp_path, data, extra)
    one, one_state = _weights(single_dir)
    two, two_state = _weights(multi_dir)
    assert two_state["optimization"]["optimizer_steps"] == 2
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-5)
    # rank 0 alone wrote one metrics file and one checkpoint directory
    records = [
        json.loads(line)
        for line in (multi_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["optimizer_step"] for r in records if "batch_loss" in r] == [2]
    assert sorted(p.name for p in (multi_dir / "training_checkpoints").iterdir()) == [
        "ckpt.tar"
    ]
    # resume under torchrun: two more steps continue the clock and the sampler
    _torchrun(multi, "max_steps=4")
    _, resumed = _weights(multi_dir)
    assert resumed["optimization"]["optimizer_steps"] == 4
    assert resumed["trainer"]["sampler"]["batches_done"] == 4


def test_torchrun_nonfinite_loss_ends_all_ranks_with_the_error(tmp_path):
    data = tiny_data(tmp_path)
    config = tiny_config(data, tmp_path / "nan", ["stepper_training.loss.type=NaN"])
    path = _write_config(tmp_path / "nan.yaml", config)
    result = _torchrun(path, expect_success=False)
    assert result.returncode != 0
    assert "loss term 'main' is not finite at rollout step 0, epoch 0, batch 0" in (
        result.stdout + result.stderr
    )
    assert not (tmp_path / "nan" / "training_checkpoints" / "ckpt.tar").exists()


def _data_with_one_bad_sample(tmp_path):
    """Tiny data where only the first window of the first file holds a NaN."""
    import shutil

    import numpy as np
    import xarray as xr

    data = tiny_data(tmp_path)
    copy = tmp_path / "data_with_nan"
    shutil.copytree(data, copy)
    first = sorted((copy / "train").glob("*.nc"))[0]
    with xr.open_dataset(first) as ds:
        loaded = ds.load()
    values = loaded["geopotential"].values.copy()
    values[0, 0, 0] = np.nan  # time 0 is in the first window only
    loaded["geopotential"].values = values
    first.unlink()
    loaded.to_netcdf(first)
    return copy


def test_torchrun_ranks_agree_to_skip_a_batch_only_one_of_them_finds_bad(tmp_path):
    data = _data_with_one_bad_sample(tmp_path)
    extra = [
        "train_loader.num_data_workers=0",
        "train_loader.dataset.allow_nans=true",
        "stepper_training.on_nonfinite_loss=skip_batch",
        "max_epochs=1",
        "distributed_timeout_seconds=20",
    ]
    single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
    _train_one_and_two_processes(tmp_path, data, extra)
    one, one_state = _weights(single_dir)
    two, two_state = _weights(multi_dir)
    # the batch holding the bad sample was skipped, by both ranks together
    epoch = [
        json.loads(line)
        for line in (multi_dir / "metrics.jsonl").read_text().splitlines()
        if "train/mean/skipped_batches" in line
    ][-1]
    assert epoch["train/mean/skipped_batches"] > 0
    steps = two_state["optimization"]["optimizer_steps"]
    assert steps == one_state["optimization"]["optimizer_steps"]
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=0, atol=1e-5)


def test_torchrun_two_processes_ace2_corrector_loss_equals_one_process(tmp_path):
    """ACE2's full corrector with both corrector-loss features and accumulation.

    SGD, because Adam's first step divides each gradient by its magnitude,
    turning reduction-order rounding of near-zero gradients into lr-sized
    differences; the gradients themselves agree to float32 rounding.

    The learning rate is one at which the first step lowers the loss. The
    untrained network's loss on the toy atmosphere is about 1e4 (residual-
    scaled, as in ACE); at lr 1e-3 the first step raises it to about 5e7, and
    from there the second step's gradient changes by 1e-5 relative when the
    weights change by one float32 ulp -- the difference that summing the
    gradient as two half-batch means rather than one whole-batch mean makes.
    The test would then measure that amplification, not the data parallelism
    (whose per-sample exactness ``test_ace2_corrector_batch_split`` checks).
    """
    paths = write_ace_format_dataset(
        tmp_path / "ace", n_lat=8, n_lon=16, n_levels=8, n_times=20
    )
    step = "stepper.step.config"
    overrides = [
        f"train_loader.dataset.data_path={paths.data_dir}",
        "train_loader.dataset.subset={stop: 12}",
        "train_loader.num_data_workers=0",
        f"validation.loader.dataset.data_path={paths.data_dir}",
        "validation.loader.dataset.subset={start: 14}",
        f"{step}.normalization.network.global_means_path={paths.means_path}",
        f"{step}.normalization.network.global_stds_path={paths.stds_path}",
        f"{step}.normalization.residual.global_means_path={paths.means_path}",
        f"{step}.normalization.residual.global_stds_path={paths.residual_stds_path}",
        f"{step}.builder.config.embed_dim=8",
        "stepper_training.corrector_loss={precorrector_optimization: {}, "
        "regularization: {weight: 0.5}}",
        "logging.log_to_screen=false",
        "max_steps=2",
        "logging.batch_log_interval=1",
        "optimization.optimizer_type=SGD",
        "optimization.lr=1.0e-4",
    ]
    configs = {}
    for name in ("single", "multi"):
        config = load_train_config(
            REPO / "configs" / "ace_atmosphere.yaml",
            [*overrides, f"experiment_dir={tmp_path / name}"],
        )
        assert config.optimization.use_gradient_accumulation
        configs[name] = _write_config(tmp_path / f"{name}.yaml", config)
    _run([sys.executable, "-m", "fme.ace.train", str(configs["single"])])
    _torchrun(configs["multi"])
    single_losses = [
        json.loads(line)["batch_loss"]
        for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()
        if "batch_loss" in line
    ]
    assert single_losses[1] < single_losses[0], single_losses  # a descent step
    one, _ = _weights(tmp_path / "single")
    two, two_state = _weights(tmp_path / "multi")
    assert two_state["optimization"]["optimizer_steps"] == 2
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-5, atol=1e-5)
    records = [
        json.loads(line)
        for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    ]
    logged = {k for r in records for k in r}
    assert any("corrector_regularization" in k for k in logged), sorted(logged)
