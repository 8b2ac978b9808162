"""Where rollouts start: indices, explicit lists and times, refused when outside the data."""

import numpy as np
import pytest
import xarray as xr

from fme.ace.inference.data import (
    ExplicitIndices,
    InferenceData,
    InferenceDataLoaderConfig,
    StartIndices,
    TimestampList,
)
from fme.core.config_loading import from_dict_strict

START = np.datetime64("2000-01-01T00:00", "ns")


def _write(directory, n_times, start=START, name="data.nc"):
    directory.mkdir(parents=True, exist_ok=True)
    times = start + np.arange(n_times) * np.timedelta64(6, "h")
    values = np.arange(n_times, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3))
    xr.Dataset(
        {"a": (("time", "lat", "lon"), values.astype(np.float32))},
        coords={"time": times, "lat": [-30.0, 30.0], "lon": [0.0, 120.0, 240.0]},
    ).to_netcdf(directory / name)


def _loader(tmp_path, start_indices):
    return from_dict_strict(
        InferenceDataLoaderConfig,
        {"dataset": {"data_path": str(tmp_path)}, "start_indices": start_indices},
    )


def test_the_three_forms_of_start_indices(tmp_path):
    _write(tmp_path, 20)
    forms = {
        "range": ({"first": 2, "n_initial_conditions": 3, "interval": 4}, [2, 6, 10]),
        "list": ({"list": [1, 7]}, [1, 7]),
        "times": (
            {"times": ["2000-01-01T12:00:00", "2000-01-03T00:00:00"]},
            [2, 8],
        ),
    }
    for spec, expected in forms.values():
        config = _loader(tmp_path, spec)
        data = InferenceData(
            config.dataset,
            start_indices=config.start_indices,
            names=["a"],
            n_forward_steps=5,
        )
        assert data.all_indices == expected
        window = data.window(1, 3)
        assert window is not None
        firsts = window.data["a"][:, 0, 0, 0].tolist()
        assert firsts == [float(i + 1) for i in expected]
    assert isinstance(_loader(tmp_path, forms["times"][0]).start_indices, TimestampList)
    assert isinstance(
        _loader(tmp_path, forms["list"][0]).start_indices, ExplicitIndices
    )
    assert isinstance(_loader(tmp_path, forms["range"][0]).start_indices, StartIndices)


def test_start_times_not_in_the_data_are_refused_before_any_rollout(tmp_path):
    _write(tmp_path, 20)
    config = _loader(
        tmp_path, {"times": ["2000-01-01T03:00:00", "1999-12-31T00:00:00"]}
    )
    with pytest.raises(
        ValueError,
        match=r"\['2000-01-01T03:00:00', '1999-12-31T00:00:00'\] are not times of the data",
    ):
        InferenceData(
            config.dataset,
            start_indices=config.start_indices,
            names=["a"],
            n_forward_steps=2,
        )
    late = _loader(tmp_path, {"times": ["2000-01-05T00:00:00"]})  # index 16 of 20
    with pytest.raises(
        ValueError,
        match=r"time indices \[16\] run past the end of .*/\*\.nc \(20 times",
    ):
        InferenceData(
            late.dataset,
            start_indices=late.start_indices,
            names=["a"],
            n_forward_steps=4,
        )


def test_rollout_across_a_gap_between_trajectories_is_refused(tmp_path):
    _write(tmp_path, 10, name="a.nc")
    _write(tmp_path, 10, start=START + np.timedelta64(30, "D"), name="b.nc")
    config = _loader(tmp_path, {"first": 6, "n_initial_conditions": 1})
    with pytest.raises(ValueError, match="cross a gap in time"):
        InferenceData(
            config.dataset,
            start_indices=config.start_indices,
            names=["a"],
            n_forward_steps=5,
        )


def test_inference_data_may_not_be_subset(tmp_path):
    with pytest.raises(ValueError, match="may not have a subset"):
        from_dict_strict(
            InferenceDataLoaderConfig,
            {"dataset": {"data_path": str(tmp_path), "subset": {"stop": 4}}},
        )
    with pytest.raises(ValueError, match="not supported here: loader.perturbations"):
        from_dict_strict(
            InferenceDataLoaderConfig,
            {"dataset": {"data_path": str(tmp_path)}, "perturbations": {"x": 1}},
        )
