"""``python -m fme.ace.inference``: forecast-only rollouts, ACE's files, restart."""

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from ace_checkpoint_builders import (
    ace_checkpoint,
    ace_data,
    data_times,
    write_initial_conditions,
)

from fme.ace.evaluate.main import load_stepper
from fme.ace.inference.config import InferenceConfig
from fme.ace.inference.main import main, run_inference
from fme.core.config_loading import from_dict_strict

N_STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    paths = ace_data(root / "data", n_times=12, n_files=3)
    checkpoint = ace_checkpoint(paths, root / "ckpt" / "ckpt.tar")
    ic = write_initial_conditions(paths, root / "ic" / "ic.nc", [2, 9])
    return root, paths, checkpoint, ic


def _config(root, paths, checkpoint, ic, *, out, n_steps=N_STEPS, **extra):
    return from_dict_strict(
        InferenceConfig,
        {
            "experiment_dir": str(out),
            "n_forward_steps": n_steps,
            "forward_steps_in_memory": 4,
            "checkpoint_path": str(checkpoint),
            "logging": {"log_to_screen": False},
            "initial_condition": {"path": str(ic)},
            "forcing_loader": {"dataset": {"data_path": str(paths.data_dir)}},
            **extra,
        },
    )


def _reference_rollout(checkpoint, paths, starts, n_steps):
    """The stepper rolled out by hand from the data at ``starts``."""
    stepper = load_stepper(checkpoint)
    data = data_times(paths)
    ic = {
        n: torch.tensor(data[n].isel(time=starts).values)
        for n in stepper.prognostic_names
    }
    forcing = {
        n: torch.stack(
            [
                torch.tensor(data[n].isel(time=slice(s, s + n_steps + 1)).values)
                for s in starts
            ]
        )
        for n in stepper.forcing_names
    }
    with torch.no_grad():
        outputs = list(
            stepper.rollout(
                initial_condition=ic,
                forcing=forcing,
                n_forward_steps=n_steps,
                detach_uncorrected=True,
            )
        )
    return stepper, {
        n: torch.stack([o.output[n] for o in outputs], dim=1) for n in stepper.out_names
    }


def test_inference_writes_ace_files_equal_to_a_hand_rollout(setup, tmp_path):
    root, paths, checkpoint, ic = setup
    out = tmp_path / "run"
    run_inference(_config(root, paths, checkpoint, ic, out=out))
    stepper, expected = _reference_rollout(checkpoint, paths, [2, 9], N_STEPS)
    assert sorted(p.name for p in out.glob("*.nc")) == [
        "autoregressive_predictions.nc",
        "initial_condition.nc",
        "monthly_mean_predictions.nc",
        "restart.nc",
        "time_mean_diagnostics.nc",
    ]
    with xr.open_dataset(out / "autoregressive_predictions.nc") as ds:
        assert ds["PRESsfc"].dims == ("sample", "time", "lat", "lon")
        for name in stepper.out_names:
            np.testing.assert_allclose(
                ds[name].values, expected[name].numpy(), rtol=1e-5, atol=1e-5
            )
        start = np.datetime64("2000-01-01T00:00", "ns")
        init = start + np.array([2, 9]) * np.timedelta64(6, "h")
        np.testing.assert_array_equal(ds["init_time"].values, init)
        leads = np.arange(1, N_STEPS + 1) * np.timedelta64(6, "h")
        np.testing.assert_array_equal(ds["valid_time"].values, init[:, None] + leads)
        assert ds["PRESsfc"].attrs["units"] == "Pa"
        assert ds.attrs["Conventions"] == "CF-1.8"
    with xr.open_dataset(out / "restart.nc") as restart:
        for name in stepper.prognostic_names:
            np.testing.assert_allclose(
                restart[name].values,
                expected[name][:, -1].numpy(),
                rtol=1e-5,
                atol=1e-5,
            )
        np.testing.assert_array_equal(
            restart["time"].values, init + N_STEPS * np.timedelta64(6, "h")
        )
    with xr.open_dataset(out / "monthly_mean_predictions.nc") as monthly:
        # every step of these 1.5-day runs falls in January 2000: one month
        assert monthly["counts"].values.tolist() == [[N_STEPS], [N_STEPS]]
        np.testing.assert_allclose(
            monthly["PRESsfc"].values[:, 0],
            expected["PRESsfc"].mean(dim=1).numpy(),
            rtol=1e-6,
        )
    # every gridded or per-step variable written carries per-chunk checksums
    for path in out.glob("*.nc"):
        with netCDF4.Dataset(path) as ds:
            for name in stepper.out_names:
                if name in ds.variables:
                    assert ds[name].filters()["fletcher32"] is True, (path, name)
    with netCDF4.Dataset(out / "time_mean_diagnostics.nc") as ds:
        gridded = [v for v in ds.variables.values() if v.ndim == 2]
        assert gridded and all(v.filters()["fletcher32"] for v in gridded)


def test_restart_continues_the_run(setup, tmp_path):
    root, paths, checkpoint, ic = setup
    whole = tmp_path / "whole"
    run_inference(_config(root, paths, checkpoint, ic, out=whole))
    first = tmp_path / "first"
    run_inference(_config(root, paths, checkpoint, ic, out=first, n_steps=3))
    second = tmp_path / "second"
    run_inference(
        _config(root, paths, checkpoint, first / "restart.nc", out=second, n_steps=3)
    )
    with xr.open_dataset(whole / "autoregressive_predictions.nc") as a:
        with xr.open_dataset(second / "autoregressive_predictions.nc") as b:
            for name in ("PRESsfc", "air_temperature_1", "PRATEsfc"):
                np.testing.assert_array_equal(
                    b[name].values, a[name].isel(time=slice(3, 6)).values
                )
            np.testing.assert_array_equal(
                b["valid_time"].values, a["valid_time"].isel(time=slice(3, 6)).values
            )


def test_restart_carries_the_initial_conditions_dry_air_as_ace_does(setup, tmp_path):
    """ACE's restart variable: the initial condition's global-mean dry air (Pa)."""
    root, paths, checkpoint, ic = setup
    run_inference(_config(root, paths, checkpoint, ic, out=tmp_path, n_steps=3))
    name = "_fme_state__stepper__corrector_state.global_dry_air_mass"
    with xr.open_dataset(tmp_path / "restart.nc") as restart:
        assert restart.attrs["_fme_schema_version"] == 1
        assert bool(restart["_fme_state__stepper__corrector_state.present"])
        assert restart[name].dims[0] == "sample"
        assert restart[name].dtype == np.float64
        carried = restart[name].values
    with xr.open_dataset(ic) as initial:
        with xr.open_dataset(sorted(paths.data_dir.glob("*.nc"))[0]) as data:
            ak = [float(data[f"ak_{k}"]) for k in range(9)]
            bk = [float(data[f"bk_{k}"]) for k in range(9)]
        ps = initial["PRESsfc"].values.astype(np.float64)
        water = sum(
            initial[f"specific_total_water_{k}"].values.astype(np.float64)
            * ((ak[k + 1] - ak[k]) + (bk[k + 1] - bk[k]) * ps)
            for k in range(8)
        )
        weights = np.cos(np.deg2rad(initial["lat"].values))[:, None] * np.ones(16)
        expected = ((ps - water) * weights).sum(axis=(1, 2)) / weights.sum()
    assert carried.shape == (2, 1, 1)
    # column dry air is computed in the data's float32, as ACE does
    np.testing.assert_allclose(carried[:, 0, 0], expected, rtol=2e-7)


def test_start_times_outside_the_forcing_are_refused(setup, tmp_path):
    root, paths, checkpoint, ic = setup
    config = _config(root, paths, checkpoint, ic, out=tmp_path, n_steps=30)
    with pytest.raises(ValueError, match=r"run past the end of .*data/\*\.nc"):
        run_inference(config)
    shifted = tmp_path / "late_ic.nc"
    with xr.open_dataset(ic) as ds:
        late = ds.load()
    late["time"] = late["time"] + np.timedelta64(30, "D")
    late.to_netcdf(shifted)
    with pytest.raises(ValueError, match="are not times of the forcing data"):
        run_inference(_config(root, paths, checkpoint, shifted, out=tmp_path))


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment_dir: x\nn_forward_steps: 2\ncheckpoint_path: c\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bad)])
    assert exit_info.value.code == 2
    assert "initial_condition: required key is missing" in capsys.readouterr().err
