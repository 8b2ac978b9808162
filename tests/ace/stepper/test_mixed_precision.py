"""Mixed precision (``enable_automatic_mixed_precision``) on CPU.

The network runs in bfloat16 under ``torch.autocast``; the corrector and the
loss run in float32, so the dry-air invariant holds to float32 precision and
the loss is within bfloat16 tolerance of the full-precision one. Uses the
tiny SFNO checkpoint the released ACE wrote (dry-air corrector).
"""

import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.batch import BatchData
from fme.ace.evaluate.main import load_stepper
from fme.ace.physics import GRAVITY_M_PER_S2 as GRAVITY
from fme.ace.stepper.train_stepper import TrainStepperConfig
from fme.core.config_loading import from_dict_strict
from fme.core.optimization import OptimizationConfig

RUN = Path(__file__).resolve().parents[1] / "ace_compat" / "data" / "ace_run"


def _batch(tmp_path: Path, names: list[str]) -> BatchData:
    fixture = json.loads((RUN / "fixture.json").read_text())
    paths = write_ace_format_dataset(tmp_path / "data", **fixture)
    (data_file,) = sorted(paths.data_dir.glob("*.nc"))
    with xr.open_dataset(data_file) as ds:
        windows = [slice(i, i + 3) for i in (0, 5, 9, 14)]
        data = {
            n: torch.stack(
                [torch.from_numpy(ds[n].values[w].astype(np.float32)) for w in windows]
            )
            for n in names
        }
        time = np.stack([ds["time"].values[w] for w in windows])
    return BatchData(data=data, time=time)


def _train_step(tmp_path: Path, amp: bool):
    torch.manual_seed(0)
    stepper = load_stepper(RUN / "ckpt.tar")
    batch = _batch(tmp_path, stepper.all_names)
    training = from_dict_strict(
        TrainStepperConfig,
        {"loss": {"type": "MSE"}, "n_forward_steps": 2},
        path="stepper_training",
    )
    train_stepper = training.build(stepper)
    optimization = OptimizationConfig(
        optimizer_type="Adam", lr=1e-3, enable_automatic_mixed_precision=amp
    ).build(stepper.module.parameters())
    dtypes: list[torch.dtype] = []
    hook = stepper.base_module.encoder.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype)
    )
    loss = train_stepper.train_on_batch(batch, optimization).metrics["loss"]
    hook.remove()
    return stepper, batch, optimization, loss, dtypes


def test_loss_within_bfloat16_tolerance_and_state_stays_float32(tmp_path):
    _, _, _, full, full_dtypes = _train_step(tmp_path / "a", amp=False)
    stepper, _, optimization, mixed, mixed_dtypes = _train_step(
        tmp_path / "b", amp=True
    )
    assert set(full_dtypes) == {torch.float32}
    assert set(mixed_dtypes) == {torch.bfloat16}  # the network ran in bf16
    assert abs(mixed - full) <= 2e-2 * full, (mixed, full)
    assert mixed != full
    for param in stepper.base_module.parameters():
        assert param.dtype == torch.float32
        assert param.grad is None or param.grad.dtype == torch.float32
    for state in optimization.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32


def test_corrector_invariant_holds_to_float32_precision_under_autocast(tmp_path):
    stepper = load_stepper(RUN / "ckpt.tar")
    batch = _batch(tmp_path, stepper.all_names)
    inputs = {n: batch.data[n][:, 0] for n in stepper.in_names}
    forcing = {n: batch.data[n][:, 1] for n in stepper.forcing_names}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = stepper.step.step(inputs, forcing, detach_uncorrected=True)
    assert all(v.dtype == torch.float32 for v in out.output.values())
    vertical = stepper.dataset_info.vertical_coordinate
    ops = stepper.dataset_info.gridded_operations

    def dry_air(state):
        water = torch.stack([state[f"specific_total_water_{k}"] for k in range(2)], -1)
        path = vertical.vertical_integral(water.double(), state["PRESsfc"].double())
        return ops.area_weighted_mean(state["PRESsfc"].double() - GRAVITY * path)

    torch.testing.assert_close(dry_air(out.output), dry_air(inputs), rtol=1e-6, atol=0)
    # the corrector did change the bf16 network's surface pressure
    correction = out.output["PRESsfc"] - out.uncorrected["PRESsfc"]
    assert correction.abs().max() > 1e-3
