import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fme.ace.evaluation.writer import (
    PREDICTION_FILENAME,
    TARGET_FILENAME,
    PredictionWriter,
)

N_LAT, N_LON = 4, 8
LAT = torch.linspace(-67.5, 67.5, N_LAT)
LON = torch.arange(N_LON) * 45.0
METADATA = {"a": {"units": "K", "long_name": "temperature"}}


def make_writer(tmp_path: Path, **overrides) -> PredictionWriter:
    kwargs: dict = dict(
        experiment_dir=tmp_path,
        names=["a", "b"],
        lat=LAT,
        lon=LON,
        n_samples=3,
        n_leads=4,
        timestep=datetime.timedelta(hours=6),
        variable_metadata=METADATA,
    )
    kwargs.update(overrides)
    return PredictionWriter(**kwargs)


def fields(seed: int, batch: int, n_leads: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(batch, n_leads, N_LAT, N_LON, generator=gen, dtype=torch.float64)
        for n in ("a", "b")
    }


def test_round_trip_through_xarray(tmp_path):
    prediction, target = fields(0, 3, 4), fields(1, 3, 4)
    writer = make_writer(tmp_path)
    # Out of order chunks of samples and leads.
    for samples, leads, lead_start in (
        (slice(2, 3), slice(0, 4), 1),
        (slice(0, 2), slice(2, 4), 3),
        (slice(0, 2), slice(0, 2), 1),
    ):
        writer.append(
            sample_start=samples.start,
            lead_start=lead_start,
            prediction={k: v[samples, leads] for k, v in prediction.items()},
            target={k: v[samples, leads] for k, v in target.items()},
        )
    init_times = np.array(
        ["2020-01-01T00", "2020-01-01T06", "2020-01-02T12"], dtype="datetime64[ns]"
    )
    writer.set_init_times(1, init_times[1:])
    writer.set_init_times(0, init_times[:1])
    assert not (tmp_path / PREDICTION_FILENAME).exists()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [PREDICTION_FILENAME, TARGET_FILENAME]
    )

    for filename, expected in (
        (PREDICTION_FILENAME, prediction),
        (TARGET_FILENAME, target),
    ):
        with xr.open_dataset(tmp_path / filename) as ds:
            for name in ("a", "b"):
                assert ds[name].dims == ("sample", "time", "lat", "lon")
                assert ds[name].dtype == np.float32
                np.testing.assert_array_equal(
                    ds[name].values, expected[name].to(torch.float32).numpy()
                )
            assert ds["a"].attrs["units"] == "K"
            assert ds["a"].attrs["long_name"] == "temperature"
            np.testing.assert_allclose(ds["lat"].values, LAT.numpy())
            np.testing.assert_allclose(ds["lon"].values, LON.numpy())
            assert ds["lat"].attrs["units"] == "degrees_north"
            assert ds["lon"].attrs["units"] == "degrees_east"
            expected_leads = np.array([6, 12, 18, 24], dtype="timedelta64[h]")
            np.testing.assert_array_equal(ds["time"].values, expected_leads)
            np.testing.assert_array_equal(ds["init_time"].values, init_times)
            np.testing.assert_array_equal(
                ds["valid_time"].values, init_times[:, None] + expected_leads
            )
            assert ds["time"].attrs["standard_name"] == "forecast_period"
            assert ds["valid_time"].attrs["standard_name"] == "time"
            assert ds.attrs["Conventions"] == "CF-1.8"
            assert ds.attrs["source"].startswith("fme ")
        with xr.open_dataset(tmp_path / filename, decode_timedelta=False) as raw:
            assert raw["time"].attrs["units"] == "microseconds"
            hours_us = 3600 * 10**6
            np.testing.assert_array_equal(
                raw["time"].values,
                [6 * hours_us, 12 * hours_us, 18 * hours_us, 24 * hours_us],
            )


def test_first_lead_zero_holds_initial_condition_and_unwritten_is_nan(tmp_path):
    writer = make_writer(
        tmp_path,
        first_lead=0,
        n_leads=3,
        timestep=datetime.timedelta(minutes=90),
        save_target=False,
    )
    data = fields(2, 1, 1)
    writer.append(sample_start=1, lead_start=0, prediction=data, target=data)
    with pytest.raises(ValueError, match="lead 3..3 is outside"):
        writer.append(sample_start=0, lead_start=3, prediction=data, target=data)
    with pytest.raises(ValueError, match="sample 3..3 is outside"):
        writer.append(sample_start=3, lead_start=1, prediction=data, target=data)
    writer.close()
    assert not (tmp_path / TARGET_FILENAME).exists()
    with xr.open_dataset(tmp_path / PREDICTION_FILENAME) as ds:
        expected_leads = np.array([0, 90, 180], dtype="timedelta64[m]")
        np.testing.assert_array_equal(ds["time"].values, expected_leads)
        np.testing.assert_array_equal(
            ds["b"].values[1, 0], data["b"][0, 0].to(torch.float32).numpy()
        )
        assert np.isnan(ds["b"].values[0]).all()
        assert np.isnan(ds["b"].values[1, 1:]).all()
        assert np.isnat(ds["init_time"].values).all()


def test_failure_inside_context_leaves_no_file(tmp_path):
    (tmp_path / PREDICTION_FILENAME).write_text("previous good file")
    with pytest.raises(RuntimeError, match="boom"):
        with make_writer(tmp_path) as writer:
            data = fields(3, 1, 1)
            writer.append(sample_start=0, lead_start=1, prediction=data, target=data)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREDICTION_FILENAME]
    assert (tmp_path / PREDICTION_FILENAME).read_text() == "previous good file"
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(sample_start=0, lead_start=1, prediction=data, target=data)


def test_wrong_shapes_raise(tmp_path):
    writer = make_writer(tmp_path)
    bad = {k: v[..., :-1] for k, v in fields(4, 1, 1).items()}
    with pytest.raises(ValueError, match="must be \\[batch, lead, 4, 8\\]"):
        writer.append(sample_start=0, lead_start=1, prediction=bad, target=bad)
    with pytest.raises(ValueError, match="datetime64"):
        writer.set_init_times(0, np.array([1.0]))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_written_variables_carry_fletcher32_checksums(tmp_path):
    import netCDF4

    writer = make_writer(tmp_path)
    writer.append(
        sample_start=0,
        lead_start=1,
        prediction=fields(0, 3, 4),
        target=fields(1, 3, 4),
    )
    writer.close()
    for filename in (PREDICTION_FILENAME, TARGET_FILENAME):
        with netCDF4.Dataset(tmp_path / filename) as ds:
            for name in ("a", "b"):
                assert ds[name].filters()["fletcher32"] is True, (filename, name)
