"""An ACE checkpoint fine-tunes here, corrector-aware, from ACE's own loss.

``data/ace_run/last_batch_loss.pt`` holds the released train stepper's loss
on its last training batch (MSE, two rollout steps, dry-air corrector), the
start times of the batch's windows and the weights it had before that step
(``scripts/make_ace_reference.py``).
"""

import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.batch import BatchData
from fme.ace.data.dataset_info_state import dataset_info_from_state
from fme.ace.stepper.parameter_init import initialize_stepper
from fme.ace.stepper.stepper import Stepper, StepperConfig
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict
from fme.core.optimization import OptimizationConfig
from fme.core.parameter_init import ParameterInitConfig

RUN = Path(__file__).resolve().parent / "data" / "ace_run"
CKPT = RUN / "ckpt.tar"


def _stepper() -> Stepper:
    """``stepper: {checkpoint_path: ckpt.tar}``, built on the checkpoint's grid."""
    config = StepperConfig(checkpoint_path=str(CKPT))
    assert config.checkpoint_path is None and config.step is not None
    info = load_checkpoint(CKPT)["trainable"]["stepper"]["dataset_info"]
    return config.build(dataset_info=dataset_info_from_state(info))


def _ace_batch(tmp_path: Path, names: list[str], starts: list[str]) -> BatchData:
    fixture = json.loads((RUN / "fixture.json").read_text())
    paths = write_ace_format_dataset(tmp_path / "data", **fixture)
    (data_file,) = sorted(paths.data_dir.glob("*.nc"))
    with xr.open_dataset(data_file) as ds:
        times = ds["time"].values
        index = [int(np.nonzero(times == np.datetime64(s))[0][0]) for s in starts]
        windows = [slice(i, i + 3) for i in index]
        data = {
            n: torch.stack(
                [torch.from_numpy(ds[n].values[w].astype(np.float32)) for w in windows]
            )
            for n in names
        }
        time = np.stack([times[w] for w in windows])
    return BatchData(data=data, time=time)


def test_first_step_loss_equals_the_released_models_loss(tmp_path):
    reference = torch.load(RUN / "last_batch_loss.pt", weights_only=True)
    stepper = _stepper()
    # ACE's module state, "module." prefixed as in its checkpoints
    weights = {
        k.removeprefix("module."): v for k, v in reference["weights_before"].items()
    }
    stepper.base_module.load_state_dict(weights)
    batch = _ace_batch(tmp_path, stepper.all_names, reference["time"])
    training = from_dict_strict(
        TrainStepperConfig,
        {"loss": {"type": "MSE"}, "n_forward_steps": 2},
        path="stepper_training",
    )
    train_stepper = training.build(stepper)
    stepper.module.train()
    loss = train_stepper.validate_on_batch(batch).metrics["loss"]
    assert abs(loss - reference["loss"]) <= 1e-5 * reference["loss"], (
        loss,
        reference["loss"],
    )


def test_ace_checkpoint_fine_tunes_with_the_corrector_loss(tmp_path):
    stepper = _stepper()
    loaded = initialize_stepper(stepper, ParameterInitConfig(weights_path=str(CKPT)))
    assert "blocks.0.filter.filter.weight" in loaded
    reference = torch.load(RUN / "last_batch_loss.pt", weights_only=True)
    batch = _ace_batch(tmp_path, stepper.all_names, reference["time"])
    training = from_dict_strict(
        TrainStepperConfig,
        {
            "loss": {"type": "MSE"},
            "n_forward_steps": 2,
            "corrector_loss": {
                "precorrector_optimization": {},
                "regularization": {"weight": 1.0},
            },
        },
        path="stepper_training",
    )
    train_stepper = training.build(stepper)
    optimization = OptimizationConfig(optimizer_type="Adam", lr=1e-3).build(
        stepper.module.parameters()
    )
    first = train_stepper.validate_on_batch(batch).metrics
    assert first["corrector_regularization"] > 0  # the dry-air fix is penalised
    for _ in range(10):
        train_stepper.train_on_batch(batch, optimization)
    last = train_stepper.validate_on_batch(batch).metrics
    assert last["loss"] < 0.9 * first["loss"], (first["loss"], last["loss"])


def test_example_config_fine_tunes_the_ace_checkpoint(tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[3]
    monkeypatch.chdir(repo)  # the example's paths are relative to the repository
    fixture = json.loads((RUN / "fixture.json").read_text())
    paths = write_ace_format_dataset(tmp_path / "data", **fixture)
    config = load_train_config(
        repo / "configs" / "ace_fine_tune_corrector_loss.yaml",
        [
            f"experiment_dir={tmp_path / 'run'}",
            f"train_loader.dataset.data_path={paths.data_dir}",
            f"validation.loader.dataset.data_path={paths.data_dir}",
            # validate on the training windows: the fit must improve there
            "validation.loader.dataset.subset={stop: 24}",
            "logging.log_to_screen=false",
            "max_epochs=3",
            "optimization.lr=1.0e-3",
        ],
    )
    run_training(config)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    validation = [
        json.loads(line)["val/mean/main_loss"]
        for line in lines
        if "val/mean/main_loss" in json.loads(line)
    ]
    assert len(validation) == 3 and validation[-1] < validation[0], validation
    fine_tuned = load_checkpoint(tmp_path / "run" / "training_checkpoints" / "ckpt.tar")
    ace = load_checkpoint(CKPT)["trainable"]["stepper"]["module"]
    weights = fine_tuned["trainable"]["stepper"]["module"]
    assert sorted(weights) == sorted(ace)
    assert not torch.equal(weights["decoder.2.weight"], ace["decoder.2.weight"])
