"""ACE's own configs load strictly here and run with only their paths changed.

The evaluator and inference configs run end to end on tiny data; of the train
configs, the data and inline-inference sections load strictly and build their
datasets on tiny netCDF and zarr stores holding the times the configs ask for
(both train configs also train end to end:
``tests/ace/train/test_ace_reference_train_configs.py``).
"""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from ace_checkpoint_builders import ace_checkpoint, ace_data, write_initial_conditions

from fme.ace.data.loader import DataLoaderConfig, build_data_loader
from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import run_evaluation
from fme.ace.inference.config import InferenceConfig
from fme.ace.inference.data import InferenceData
from fme.ace.inference.inline import InlineInferenceConfig
from fme.ace.inference.main import run_inference
from fme.core.config_loading import from_dict_strict

CONFIGS = Path(__file__).resolve().parents[1] / "reference_configs"


def _load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    """404 six-hourly times in four files, and an untrained checkpoint."""
    root = tmp_path_factory.mktemp("reference")
    paths = ace_data(root / "data", n_times=101, n_files=4)
    return (
        root,
        paths,
        ace_checkpoint(paths, root / "ace2_era5_ckpt.tar", weight_scale=0.05),
    )


def test_ace_evaluator_config_runs(long_data, tmp_path):
    root, paths, checkpoint = long_data
    data = _load("evaluator-config.yaml")
    data["experiment_dir"] = str(tmp_path / "evaluator_output")
    data["checkpoint_path"] = str(checkpoint)
    data["loader"]["dataset"]["data_path"] = str(paths.data_dir)
    data["logging"]["log_to_screen"] = False
    config = from_dict_strict(EvaluatorConfig, data)
    metrics = run_evaluation(config)
    assert np.isfinite(metrics["rmse/PRESsfc/lead_400"])
    out = Path(config.experiment_dir)
    for name in ("mean", "time_mean", "zonal_mean", "power_spectrum"):
        assert (out / f"{name}_diagnostics.nc").is_file()
    assert not (out / "autoregressive_predictions.nc").exists()  # save: false
    with xr.open_dataset(out / "zonal_mean_diagnostics.nc") as ds:
        assert ds["gen-PRESsfc"].dims == ("forecast_step", "lat")
        assert ds["gen-PRESsfc"].shape == (400, 8)


def test_ace_inference_config_runs(long_data, tmp_path):
    root, paths, checkpoint = long_data
    data = _load("inference-config.yaml")
    ic = write_initial_conditions(paths, tmp_path / "ic_1940.nc", [0, 1, 2, 3])
    data["experiment_dir"] = str(tmp_path / "inference_output")
    data["checkpoint_path"] = str(checkpoint)
    data["initial_condition"]["path"] = str(ic)
    data["forcing_loader"]["dataset"]["data_path"] = str(paths.data_dir)
    data["logging"]["log_to_screen"] = False
    config = from_dict_strict(InferenceConfig, data)
    metrics = run_inference(config)
    out = Path(config.experiment_dir)
    with xr.open_dataset(out / "restart.nc") as restart:
        # start_indices {first: 0, n_initial_conditions: 2, interval: 3}
        start = np.datetime64("2000-01-01T00:00", "ns")
        hours = (np.array([0, 3]) + 400) * 6
        np.testing.assert_array_equal(
            restart["time"].values, start + hours.astype("timedelta64[h]")
        )
    assert "global_mean_drift/dry_air_mass" in metrics
    # save_prediction_files: false, save_monthly_files defaults to true (ACE)
    assert not (out / "autoregressive_predictions.nc").exists()
    with xr.open_dataset(out / "monthly_mean_predictions.nc") as monthly:
        # 100 days from 1 and from 1.75 January 2000: January .. April
        assert monthly["counts"].values.sum(axis=1).tolist() == [400, 400]
        assert monthly["counts"].shape == (2, 4)


def _write_netcdf_years(directory: Path, start: str, n_times: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    times = np.datetime64(start, "ns") + np.arange(n_times) * np.timedelta64(6, "h")
    xr.Dataset(
        {"PRESsfc": (("time", "lat", "lon"), np.ones((n_times, 2, 4), np.float32))},
        coords={"time": times, "lat": [-45.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]},
    ).to_netcdf(directory / "data.nc")


def test_ace_train_config_data_and_inference_sections(tmp_path):
    data = _load("train-config.yaml")
    train = data["train_loader"]
    for i, entry in enumerate(train["dataset"]["concat"]):
        entry["data_path"] = str(tmp_path / f"ic_{i:04d}")
        _write_netcdf_years(Path(entry["data_path"]), f"{2000 + i}-01-01", 12)
    validation = tmp_path / "validation"
    # inference: 4 starts a year (1460 steps) apart, each 7300 steps long
    _write_netcdf_years(validation, "2010-01-01", 3 * 1460 + 7301)
    data["validation"]["loader"]["dataset"]["data_path"] = str(validation)
    for block in data["inference"]:
        block["loader"]["dataset"]["data_path"] = str(validation)
    loader = from_dict_strict(DataLoaderConfig, train, path="config.train_loader")
    built = build_data_loader(loader, names=["PRESsfc"], n_timesteps=2, shuffle=True)
    assert built.n_samples == 10 * 11  # windows never cross from one run to another
    assert loader.prefetch_factor == 4 and loader.num_data_workers == 4
    val = from_dict_strict(
        DataLoaderConfig, data["validation"]["loader"], path="config.validation"
    )
    val_data = build_data_loader(val, names=["PRESsfc"], n_timesteps=2, shuffle=False)
    assert val_data.n_samples == len(range(0, 3 * 1460 + 7300, 5))  # subset step 5
    blocks = [from_dict_strict(InlineInferenceConfig, b) for b in data["inference"]]
    inference = InferenceData(
        blocks[0].loader.dataset,
        start_indices=blocks[0].loader.start_indices,
        names=["PRESsfc"],
        n_forward_steps=blocks[0].n_forward_steps,
    )
    assert inference.all_indices == [0, 1460, 2920, 4380]


def test_era5_pretraining_config_zarr_subsets_and_start_times(tmp_path):
    data = _load("era5-ace2s-pretrain-config.yaml")
    store_name = data["train_loader"]["dataset"]["concat"][0]["file_pattern"]
    root = tmp_path / "climate-default"
    root.mkdir()
    # 6-hourly 1994-01-01 .. 2022-12-31 on a 2 x 4 grid, one variable
    times = np.arange(
        np.datetime64("1994-01-01", "ns"),
        np.datetime64("2023-01-01", "ns"),
        np.timedelta64(6, "h"),
    )
    values = np.arange(len(times), dtype=np.float32)[:, None, None] * np.ones(
        (1, 2, 4), np.float32
    )
    xr.Dataset(
        {"PRESsfc": (("time", "lat", "lon"), values)},
        coords={"time": times, "lat": [-45.0, 45.0], "lon": [0.0, 90.0, 180.0, 270.0]},
    ).to_zarr(
        root / store_name,
        zarr_format=3,
        consolidated=False,
        encoding={"PRESsfc": {"chunks": (1460, 2, 4)}},
    )
    sections = [
        data["train_loader"]["dataset"]["concat"],
        [data["validation"]["loader"]["dataset"]],
    ]
    sections.append([b["loader"]["dataset"] for b in data["inference"]])
    for section in sections:
        for entry in section:
            entry["data_path"] = str(root)
    reference = tmp_path / "time-mean.nc"
    xr.Dataset({"PRESsfc": (("lat", "lon"), np.ones((2, 4)))}).to_netcdf(reference)
    data["inference"][0]["aggregator"]["time_mean_reference_data"] = str(reference)
    train = from_dict_strict(DataLoaderConfig, data["train_loader"])
    built = build_data_loader(train, names=["PRESsfc"], n_timesteps=2, shuffle=False)
    per_day = 4
    days_to_1996 = (np.datetime64("1996-01-01") - np.datetime64("1994-01-01")).astype(
        int
    )
    days_2011_2019 = (np.datetime64("2020-01-01") - np.datetime64("2011-01-01")).astype(
        int
    )
    days_from_2021 = (np.datetime64("2023-01-01") - np.datetime64("2021-01-01")).astype(
        int
    )
    # inclusive stop_time days; the very last time cannot start a 2-time window
    expected = per_day * (days_to_1996 + days_2011_2019 + days_from_2021) - 1
    assert built.n_samples == expected
    first_batch = next(iter(built.loader))
    assert first_batch.time[0, 0] == np.datetime64("1994-01-01T00:00", "ns")
    block = from_dict_strict(InlineInferenceConfig, data["inference"][0])
    assert block.aggregator.histogram.enabled
    inference = InferenceData(
        block.loader.dataset,
        start_indices=block.loader.start_indices,
        names=["PRESsfc"],
        n_forward_steps=block.n_forward_steps,
    )
    start = np.datetime64("1994-01-01", "ns")
    expected_starts = [
        (np.datetime64(t, "ns") - start) // np.timedelta64(6, "h")
        for t in block.loader.start_indices.times
    ]
    assert inference.all_indices == expected_starts
    window = inference.window(0, 2)
    assert window is not None
    assert float(window.data["PRESsfc"][0, 0, 0, 0]) == float(expected_starts[0])
