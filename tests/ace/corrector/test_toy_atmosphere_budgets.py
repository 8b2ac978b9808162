"""The toy ACE-format atmosphere closes ACE's budgets, and so does the corrector on it."""

import datetime

import numpy as np
import pytest
import torch
import xarray as xr
from atmosphere_budgets import (
    area_mean,
    as_numpy,
    dry_air_pressure,
    moisture_budget_residual,
    net_energy_flux_into_atmosphere,
    total_energy_path,
    total_water_path,
)

from fme.ace.corrector.registry import corrector_selector_from_yaml
from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

N_LEVELS, DT = 8, 6 * 3600.0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    paths = write_ace_format_dataset(
        tmp_path_factory.mktemp("toy"), n_lat=16, n_lon=32, n_levels=N_LEVELS, n_times=6
    )
    ds = xr.load_dataset(paths.data_dir / "data_000.nc")
    ak = np.array([float(ds[f"ak_{i}"]) for i in range(N_LEVELS + 1)])
    bk = np.array([float(ds[f"bk_{i}"]) for i in range(N_LEVELS + 1)])
    fields = {n: torch.tensor(ds[n].values) for n in ds.data_vars if ds[n].ndim == 3}
    return paths, fields, ak, bk, ds.lat.values


def at(fields, t):
    return {n: v[t : t + 1] for n, v in fields.items()}


def energy_residual(before, after, lat, ak, bk, heating=0.0):
    gained = area_mean(
        total_energy_path(after, after["HGTsfc"], ak, bk, N_LEVELS), lat
    ) - area_mean(total_energy_path(before, before["HGTsfc"], ak, bk, N_LEVELS), lat)
    flux = area_mean(net_energy_flux_into_atmosphere(after, after["DSWRFtoa"]), lat)
    return gained - (flux + heating) * DT


def test_toy_atmosphere_budgets_close_by_construction(toy):
    _, fields, ak, bk, lat = toy
    dry = [
        area_mean(dry_air_pressure(at(fields, t), ak, bk, N_LEVELS), lat)
        for t in range(6)
    ]
    np.testing.assert_allclose(np.concatenate(dry), dry[0][0], rtol=1e-7)
    for t in range(1, 6):
        before, after = at(fields, t - 1), at(fields, t)
        water = max(
            total_water_path(s, ak, bk, N_LEVELS).max() for s in (before, after)
        )
        residual = moisture_budget_residual(before, after, ak, bk, N_LEVELS, DT)
        np.testing.assert_allclose(residual, 0.0, atol=16 * 2.0**-24 * water / DT)
        advection = as_numpy(after["tendency_of_total_water_path_due_to_advection"])
        np.testing.assert_allclose(area_mean(advection, lat), 0.0, atol=1e-11)
        size = area_mean(
            total_energy_path(before, before["HGTsfc"], ak, bk, N_LEVELS), lat
        )
        np.testing.assert_allclose(
            energy_residual(before, after, lat, ak, bk), 0.0, atol=5e-7 * size.max()
        )


def test_ace2s_corrector_on_toy_states(toy):
    paths, fields, ak, bk, lat = toy
    forcing = paths.forcing
    out_names = [n for n in paths.prognostic + paths.diagnostic]
    corrector = corrector_selector_from_yaml(
        {
            "conserve_dry_air": True,
            "moisture_budget_correction": "advection_and_precipitation",
            "clip_frozen_precipitation": True,
            "total_energy_budget_correction": {"method": "constant_temperature"},
            "force_positive_names": ["specific_total_water", "PRATEsfc"]
            + ["total_frozen_precipitation_rate"],
        },
        path="corrector",
    ).build(
        gridded_operations=LatLonOperations.from_latitudes(
            torch.tensor(lat, dtype=torch.float32), 32
        ),
        vertical_coordinate=HybridSigmaPressureCoordinate(
            ak=torch.tensor(ak, dtype=torch.float32),
            bk=torch.tensor(bk, dtype=torch.float32),
        ),
        out_names=out_names,
        in_names=paths.prognostic + forcing,
        next_step_names=forcing,
        timestep=datetime.timedelta(seconds=DT),
    )
    initial, truth = at(fields, 2), at(fields, 3)
    next_forcing = {n: truth[n] for n in forcing}
    # data already satisfying the constraints is (nearly) left alone
    unchanged = corrector(initial, truth, next_forcing)
    for name, value in unchanged.items():
        scale = truth[name].abs().max()
        torch.testing.assert_close(
            value / scale, truth[name] / scale, rtol=0, atol=1e-5
        )
    # a network-like perturbed prediction is corrected back onto every budget
    gen = torch.Generator().manual_seed(0)
    raw = {
        n: truth[n] + 0.3 * truth[n].std() * torch.randn(truth[n].shape, generator=gen)
        for n in out_names
    }
    assert raw["PRATEsfc"].min() < 0
    out = {**raw, **next_forcing, **corrector(initial, raw, next_forcing)}
    np.testing.assert_allclose(
        area_mean(dry_air_pressure(out, ak, bk, N_LEVELS), lat),
        area_mean(dry_air_pressure(initial, ak, bk, N_LEVELS), lat),
        rtol=1e-6,
    )
    water = max(total_water_path(s, ak, bk, N_LEVELS).max() for s in (initial, out))
    np.testing.assert_allclose(
        moisture_budget_residual(initial, out, ak, bk, N_LEVELS, DT),
        0.0,
        atol=16 * 2.0**-24 * water / DT,
    )
    size = area_mean(
        total_energy_path(initial, initial["HGTsfc"], ak, bk, N_LEVELS), lat
    )
    assert (
        np.abs(energy_residual(initial, {**raw, **next_forcing}, lat, ak, bk)).max()
        > 1e-5 * size.max()
    )
    np.testing.assert_allclose(
        energy_residual(initial, out, lat, ak, bk), 0.0, atol=5e-7 * size.max()
    )
    for k in range(N_LEVELS):
        assert out[f"specific_total_water_{k}"].min() >= 0
