import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from fme.ace.data.shallow_water import (
    FIELD_METADATA,
    FIELD_NAMES,
    PRESETS,
    ShallowWaterPreset,
    ShallowWaterWithTracer,
    _FusedTransforms,
    generate_shallow_water_dataset,
    main,
)

TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True)
def single_thread():
    # tiny spectral transforms: OpenMP threads only add contention (as in simulate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return generate_shallow_water_dataset(
        tmp_path_factory.mktemp("sw") / "data", preset="tiny", seed=0
    )


def _read_split(out: Path, split: str) -> list[xr.Dataset]:
    files = sorted((out / split).glob("*.nc"))
    return [xr.load_dataset(f) for f in files]


def test_layout_dims_and_attributes(tiny_dir):
    assert (tiny_dir / "COMPLETE.json").is_file()
    train = _read_split(tiny_dir, "train")
    validation = _read_split(tiny_dir, "validation")
    assert len(train) == TINY.n_train and len(validation) == TINY.n_validation
    for ds in train + validation:
        assert set(ds.data_vars) == set(FIELD_NAMES)
        for name in FIELD_NAMES:
            assert ds[name].dims == ("time", "lat", "lon")
            assert ds[name].shape == (TINY.n_times, TINY.nlat, TINY.nlon)
            assert ds[name].dtype == np.float32
            assert ds[name].attrs["units"] == FIELD_METADATA[name]["units"]
            assert ds[name].attrs["long_name"] == FIELD_METADATA[name]["long_name"]
        assert np.all(np.diff(ds.lat.values) > 0)  # ascending, south to north
        assert ds.lat.values[0] < -60 and ds.lat.values[-1] > 60
        np.testing.assert_allclose(ds.lon.values, np.arange(TINY.nlon) * 22.5)
        steps = np.diff(ds.time.values)
        assert np.all(steps == np.timedelta64(6, "h"))
        assert ds.time.encoding["units"] == "hours since 2000-01-01"
        assert ds.time.encoding["calendar"] == "proleptic_gregorian"
    starts = [ds.time.values[0] for ds in train + validation]
    assert len(set(starts)) == len(starts)


def test_tracer_is_non_negative_with_near_zero_regions(tiny_dir):
    for ds in _read_split(tiny_dir, "train") + _read_split(tiny_dir, "validation"):
        tracer = ds["tracer"].values
        assert tracer.min() >= 0.0
        # large areas near the small background, so raw predictions can go < 0
        assert np.mean(tracer < 3 * TINY.tracer_background) > 0.2
        assert tracer.max() > 10 * TINY.tracer_background


def test_stats_files_match_train_data(tiny_dir):
    train = _read_split(tiny_dir, "train")
    means = xr.load_dataset(tiny_dir / "stats" / "centering.nc")
    stds = xr.load_dataset(tiny_dir / "stats" / "scaling-full-field.nc")
    residual = xr.load_dataset(tiny_dir / "stats" / "scaling-residual.nc")
    for name in FIELD_NAMES:
        values = np.stack([ds[name].values.astype(np.float64) for ds in train])
        diffs = np.diff(values, axis=1)
        assert means[name].shape == ()
        np.testing.assert_allclose(float(means[name]), values.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(stds[name]), values.std(), rtol=1e-5)
        np.testing.assert_allclose(float(residual[name]), diffs.std(), rtol=1e-5)
        assert 0 < float(residual[name]) < float(stds[name])


def test_same_seed_gives_identical_data_and_other_seed_differs(tiny_dir, tmp_path):
    again = generate_shallow_water_dataset(tmp_path / "again", preset="tiny", seed=0)
    other = generate_shallow_water_dataset(tmp_path / "other", preset="tiny", seed=1)
    for split in ("train", "validation"):
        for a, b, c in zip(
            _read_split(tiny_dir, split),
            _read_split(again, split),
            _read_split(other, split),
            strict=True,
        ):
            for name in FIELD_NAMES:
                np.testing.assert_array_equal(a[name].values, b[name].values)
                assert not np.array_equal(a[name].values, c[name].values)


def test_trajectories_differ_from_each_other(tiny_dir):
    train = _read_split(tiny_dir, "train")
    assert not np.allclose(train[0]["tracer"].values, train[1]["tracer"].values)


@pytest.mark.parametrize("preset_name", ["tiny", "default"])
def test_float64_dynamics_conserve_mass_and_tracer(preset_name):
    model = ShallowWaterWithTracer(PRESETS[preset_name])
    state = model.initial_state([3, 4])
    before = model.global_integrals(state)
    after, _ = model.integrate(state, 30, [])
    drift = ((model.global_integrals(after) - before) / before).abs()
    assert drift.max() < 1e-12
    # the state did evolve
    assert not torch.allclose(
        model.grid_fields(after)["tracer"], model.grid_fields(state)["tracer"]
    )


def _max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().amax(dim=(-2, -1), keepdim=True)
    return float(((ours - reference).abs() / scale).max())


def test_tendency_and_time_scheme_match_the_solver():
    undamped = dataclasses.replace(TINY, divergence_damping_days=0.0)
    model = ShallowWaterWithTracer(undamped)
    state, _ = model.integrate(model.initial_state([1, 2]), 5, [])
    tendency = model.tendency(state)
    for b in range(2):
        reference = model.solver.dudtspec(state[b, :3])
        assert _max_relative_error(tendency[b, :3], reference) < 1e-12
    after, history = model.integrate(state, 7, [])
    assert len(history) == 2
    for b in range(2):
        reference = model.solver.timestep(state[b, :3], 7)
        assert _max_relative_error(after[b, :3], reference) < 1e-12


def test_initial_flow_is_balanced_and_divergence_free():
    model = ShallowWaterWithTracer(PRESETS["default"])
    state = model.initial_state([7])
    assert state[:, 2].abs().max() == 0.0
    tendency = model.tendency(state)
    # nonlinear balance: no initial divergence tendency (gravity-wave free start)
    assert tendency[:, 2].abs().max() < 1e-10 * tendency[:, 1].abs().max()


def test_divergence_damping_only_touches_divergence():
    damped = ShallowWaterWithTracer(TINY)
    undamped = ShallowWaterWithTracer(
        dataclasses.replace(TINY, divergence_damping_days=0.0)
    )
    state = damped.initial_state([1])
    state, _ = undamped.integrate(state, 3, [])
    a, _ = damped.integrate(state, 1, [])
    b, _ = undamped.integrate(state, 1, [])
    torch.testing.assert_close(a[:, [0, 1, 3]], b[:, [0, 1, 3]], rtol=0, atol=0)
    ratio = math.exp(-TINY.solver_dt_seconds / 86400.0)
    torch.testing.assert_close(a[:, 2], ratio * b[:, 2])


def test_integration_continues_across_calls():
    model = ShallowWaterWithTracer(TINY)
    state = model.initial_state([5])
    once, _ = model.integrate(state, 6, [])
    half, history = model.integrate(state, 3, [])
    twice, _ = model.integrate(half, 3, history)
    torch.testing.assert_close(once, twice, rtol=1e-13, atol=0.0)


def test_fused_transforms_match_torch_harmonics():
    preset = dataclasses.replace(TINY, nlat=12, nlon=24, lmax=8)
    solver = ShallowWaterWithTracer(preset).solver
    fused = _FusedTransforms(solver)
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 2, 12, 24, generator=gen, dtype=torch.float64)
    spec = torch.tril(torch.randn(3, 2, 8, 8, generator=gen, dtype=torch.complex128))
    pairs = [
        (fused.sht(grid), solver.sht(grid)),
        (fused.isht(spec), solver.isht(spec)),
        (fused.vsht(grid), solver.vsht(grid)),
        (fused.ivsht(spec), solver.ivsht(spec)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_winds_are_the_solver_getuv():
    model = ShallowWaterWithTracer(TINY)
    state = model.initial_state([9])
    fields = model.grid_fields(state)
    uv = model.solver.getuv(state[0, 1:3])
    torch.testing.assert_close(fields["eastward_wind"][0], uv[0])
    torch.testing.assert_close(fields["northward_wind"][0], uv[1])


def test_existing_complete_dataset_is_reused(tiny_dir):
    marker = tiny_dir / "COMPLETE.json"
    file = tiny_dir / "train" / "trajectory_000.nc"
    stamps = (marker.stat().st_mtime_ns, file.stat().st_mtime_ns)
    assert generate_shallow_water_dataset(tiny_dir, preset="tiny", seed=0) == tiny_dir
    assert (marker.stat().st_mtime_ns, file.stat().st_mtime_ns) == stamps


def test_other_seed_needs_overwrite(tmp_path):
    out = generate_shallow_water_dataset(tmp_path / "d", preset="tiny", seed=0)
    with pytest.raises(ValueError, match="overwrite"):
        generate_shallow_water_dataset(out, preset="tiny", seed=1)
    first = xr.load_dataset(out / "train" / "trajectory_000.nc")["tracer"].values
    generate_shallow_water_dataset(out, preset="tiny", seed=1, overwrite=True)
    second = xr.load_dataset(out / "train" / "trajectory_000.nc")["tracer"].values
    assert not np.array_equal(first, second)


def test_incomplete_dataset_is_regenerated(tmp_path):
    out = tmp_path / "d"
    (out / "train").mkdir(parents=True)
    (out / "train" / "trajectory_007.nc").write_text("interrupted run")
    (out / "train" / "trajectory_000.nc.tmp").write_text("half-written")
    generate_shallow_water_dataset(out, preset="tiny", seed=0)
    names = sorted(p.name for p in (out / "train").iterdir())
    assert names == ["trajectory_000.nc", "trajectory_001.nc"]
    assert (out / "COMPLETE.json").is_file()


def test_foreign_files_are_never_deleted(tmp_path):
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "my_notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="did not write"):
        generate_shallow_water_dataset(tmp_path, preset="tiny", seed=0)
    assert (tmp_path / "stats" / "my_notes.txt").read_text() == "keep me"
    assert not (tmp_path / "COMPLETE.json").exists()


def test_cli_writes_and_prints_paths(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--preset", "tiny", "--seed", "2"])
    printed = capsys.readouterr().out
    assert str(tmp_path / "cli" / "train") in printed
    assert len(list((tmp_path / "cli" / "validation").glob("*.nc"))) == 1
    main(["--out", str(tmp_path / "cli"), "--preset", "tiny", "--seed", "2"])
    assert "already" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "cli"), "--preset", "tiny", "--seed", "3"])
    assert "--overwrite" in capsys.readouterr().err


def test_unknown_preset_and_invalid_preset_raise(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of"):
        generate_shallow_water_dataset(tmp_path, preset="huge")
    for solver_dt_seconds in (7000.0, 0.0):
        with pytest.raises(ValueError, match="solver_dt_seconds"):
            ShallowWaterPreset(
                nlat=8,
                nlon=16,
                lmax=6,
                n_train=1,
                n_validation=0,
                n_times=4,
                solver_dt_seconds=solver_dt_seconds,
            )
    with pytest.raises(ValueError, match="lmax"):
        ShallowWaterPreset(
            nlat=8, nlon=16, lmax=9, n_train=1, n_validation=0, n_times=4
        )


def test_data_files_carry_fletcher32_checksums(tiny_dir):
    import netCDF4

    for path in sorted((tiny_dir / "train").glob("*.nc")) + sorted(
        (tiny_dir / "validation").glob("*.nc")
    ):
        with netCDF4.Dataset(path) as ds:
            for name in FIELD_NAMES:
                assert ds[name].filters()["fletcher32"] is True, (path, name)


def test_corrupt_chunk_is_detected_on_read(tiny_dir, tmp_path):
    from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset

    source = sorted((tiny_dir / "train").glob("*.nc"))[0]
    raw = bytearray(source.read_bytes())
    with xr.open_dataset(source) as ds:
        needle = ds["geopotential"].values[3].tobytes()[:64]
    offset = raw.find(needle)
    assert offset > 0  # stored uncompressed: the chunk's bytes are in the file
    raw[offset + 8] ^= 0xFF  # one flipped byte inside a data chunk
    directory = tmp_path / "train"
    directory.mkdir()
    (directory / source.name).write_bytes(bytes(raw))
    config = XarrayDataConfig(data_path=str(directory))
    with pytest.raises(ValueError, match=rf"'geopotential' in .*{source.name}.*read"):
        XarrayDataset(config, names=list(FIELD_NAMES), n_timesteps=2)
