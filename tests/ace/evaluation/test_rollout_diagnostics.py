"""Each rollout diagnostic against a hand computation on a tiny field."""

import datetime

import numpy as np
import pytest
import torch
import torch_harmonics
import xarray as xr

from fme.ace.evaluation.calendar_means import AnnualDiagnostic, SeasonalDiagnostic
from fme.ace.evaluation.histogram import HistogramDiagnostic
from fme.ace.evaluation.spectrum import PowerSpectrumDiagnostic, grid_of
from fme.ace.evaluation.time_mean import TimeMeanDiagnostic, read_reference_maps
from fme.ace.evaluation.zonal_mean import ZonalMeanDiagnostic
from fme.core.gridded_ops import LatLonOperations

LAT = torch.tensor([-60.0, -20.0, 20.0, 60.0])
N_LON = 8
OPS = LatLonOperations.from_latitudes(LAT, N_LON)
SIX_HOURS = datetime.timedelta(hours=6)


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_time_mean_maps_and_scores_by_hand(tmp_path):
    pred, target = _random(0, 2, 5, 4, N_LON), _random(1, 2, 5, 4, N_LON)
    reference = _random(2, 4, N_LON).double()
    diag = TimeMeanDiagnostic(ops=OPS, names=["x"], reference={"x": reference})
    # two chunks of leads
    for leads in (slice(0, 3), slice(3, 5)):
        diag.record(
            prediction={"x": pred[:, leads]}, target={"x": target[:, leads]}, time=None
        )
    gen_map = pred.double().mean(dim=(0, 1))
    bias = gen_map - target.double().mean(dim=(0, 1))
    w = torch.cos(torch.deg2rad(LAT.double()))[:, None].expand(4, N_LON)
    w = w / w.sum()
    metrics = diag.get_metrics()
    assert metrics["time_mean/bias/x"] == pytest.approx(float((w * bias).sum()))
    assert metrics["time_mean/rmse/x"] == pytest.approx(
        float((w * bias**2).sum().sqrt())
    )
    ref_bias = gen_map - reference
    assert metrics["time_mean_ref/rmse/x"] == pytest.approx(
        float((w * ref_bias**2).sum().sqrt())
    )
    ds = diag.get_dataset()
    np.testing.assert_allclose(ds["gen_map-x"].values, gen_map.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ds["bias_map-x"].values, bias.numpy(), rtol=1e-6)


def test_reference_file_missing_a_variable_is_refused(tmp_path):
    path = tmp_path / "time-mean.nc"
    xr.Dataset({"x": (("lat", "lon"), np.zeros((4, N_LON)))}).to_netcdf(path)
    with pytest.raises(ValueError, match=r"time-mean.nc lacks \['y'\]"):
        read_reference_maps(path, names=["x", "y"], img_shape=(4, N_LON))


def test_zonal_mean_per_lead_and_binned_by_hand():
    pred = _random(3, 2, 6, 4, N_LON)
    diag = ZonalMeanDiagnostic(names=["x"], n_lat=4, n_forward_steps=6, max_size=3)
    diag.record(prediction={"x": pred[:, :4]}, target=None, lead_start=1)
    diag.record(prediction={"x": pred[:, 4:]}, target=None, lead_start=5)
    zonal = pred.double().mean(dim=-1).mean(dim=0)  # [lead, lat]
    expected = zonal.reshape(3, 2, 4).mean(dim=1)  # bins of two leads
    np.testing.assert_allclose(diag.means("gen")["x"], expected.numpy(), rtol=1e-12)
    assert set(diag.get_dataset().data_vars) == {"gen-x"}


def test_histogram_counts_by_hand():
    values = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0, 1.0, 0.5, 0.55]).reshape(1, 1, 2, 4)
    diag = HistogramDiagnostic(names=["x"], n_bins=4)
    diag.record(prediction={"x": values}, target={"x": values * 0 + 0.3})
    counts, edges = diag.histogram("gen", "x")
    np.testing.assert_allclose(edges, [0.0, 0.25, 0.5, 0.75, 1.0])
    # [0, .25): 0, .1, .2; [.25, .5): none; [.5, .75): .5, .55; [.75, 1]: .9, 1, 1
    assert counts.tolist() == [3, 0, 2, 3]
    # a value beyond the range widens it; counts move with their bin centres
    diag.record(prediction={"x": torch.full((1, 1, 1, 1), 3.0)}, target=None)
    counts, edges = diag.histogram("gen", "x")
    np.testing.assert_allclose(edges, [0.0, 0.75, 1.5, 2.25, 3.0])
    assert counts.tolist() == [5, 3, 0, 1]
    assert counts.sum() == 9


def test_spectrum_of_a_single_spherical_harmonic_is_one_degree():
    nlat, nlon = 16, 32
    nodes, _ = np.polynomial.legendre.leggauss(nlat)
    lat = torch.tensor(np.rad2deg(np.arcsin(nodes))[::-1].copy())  # north to south
    assert grid_of(lat) == "legendre-gauss"
    isht = torch_harmonics.InverseRealSHT(nlat, nlon, grid="legendre-gauss").double()
    coefficients = torch.zeros(isht.lmax, isht.mmax, dtype=torch.complex128)
    coefficients[5, 2] = 3.0  # l = 5, m = 2
    field = isht(coefficients)
    diag = PowerSpectrumDiagnostic(names=["x"], lat=lat, n_lon=nlon)
    diag.record(prediction={"x": field[None, None]}, target={"x": field[None, None]})
    spectrum = diag.mean("gen")["x"]
    assert float(spectrum[5]) == pytest.approx(9.0, rel=1e-9)
    others = torch.cat([spectrum[:5], spectrum[6:]])
    assert float(others.abs().max()) < 1e-12
    assert diag.get_metrics()["power_spectrum/mean_abs_norm_bias/x"] == 0.0


def _times(start: str, n: int) -> np.ndarray:
    return np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(6, "h")


def test_seasons_need_enough_days_and_match_hand_means():
    n = 4 * 100  # 100 days from 1 Dec: all of DJF (90 days), 10 days of March
    time = _times("2000-12-01", n)[None]
    pred = _random(4, 1, n, 4, N_LON)
    diag = SeasonalDiagnostic(ops=OPS, names=["x"], timestep=SIX_HOURS)
    diag.record(prediction={"x": pred}, target={"x": pred * 0}, time=time)
    ds = diag.get_dataset()
    assert ds["season"].values.tolist() == ["DJF"]  # MAM has only 10 days
    djf = pred[0, : 4 * 90].double().mean(dim=0)
    np.testing.assert_allclose(ds["gen_map-x"].values[0], djf.numpy(), rtol=1e-10)


def test_annual_means_only_for_complete_years():
    n = 4 * (366 + 30)  # 2000 (leap year) complete, 30 days of 2001
    time = _times("2000-01-01", n)[None]
    values = torch.arange(n, dtype=torch.float64)[None, :, None, None].expand(
        1, n, 4, N_LON
    )
    diag = AnnualDiagnostic(ops=OPS, names=["x"], timestep=SIX_HOURS)
    diag.record(prediction={"x": values}, target={"x": values + 1.0}, time=time)
    assert diag.complete_years() == [2000]
    gen = diag.means("gen")["x"]
    assert gen.tolist() == pytest.approx([(4 * 366 - 1) / 2])
    assert diag.get_metrics()["annual/rmse/x"] == pytest.approx(1.0)


def test_spectrum_bias_scores_of_two_harmonics_by_hand():
    nlat, nlon = 16, 32
    nodes, _ = np.polynomial.legendre.leggauss(nlat)
    lat = torch.tensor(np.rad2deg(np.arcsin(nodes))[::-1].copy())
    isht = torch_harmonics.InverseRealSHT(nlat, nlon, grid="legendre-gauss").double()
    n_degrees = isht.lmax

    def field(amplitudes: dict[int, float]) -> torch.Tensor:
        coefficients = torch.zeros(isht.lmax, isht.mmax, dtype=torch.complex128)
        for degree, amplitude in amplitudes.items():
            coefficients[degree, 0] = amplitude
        return isht(coefficients)[None, None]

    # a tiny background keeps every degree's target power non-zero
    background = {degree: 1e-3 for degree in range(n_degrees)}
    target = field({**background, 3: 1.0, n_degrees - 1: 1.0})
    # power 4x at l = 3 (ratio - 1 = 3), 0.25x at the smallest scale (-0.75)
    gen = field({**background, 3: 2.0, n_degrees - 1: 0.5})
    for directional in (True, False):
        diag = PowerSpectrumDiagnostic(
            names=["x"], lat=lat, n_lon=nlon, report_directional_bias=directional
        )
        diag.record(prediction={"x": gen}, target={"x": target})
        metrics = diag.get_metrics()
        p = "power_spectrum"
        assert metrics[f"{p}/mean_abs_norm_bias/x"] == pytest.approx(
            3.75 / n_degrees, rel=1e-6
        )
        assert metrics[f"{p}/smallest_scale_norm_bias/x"] == pytest.approx(
            -0.75, rel=1e-6
        )
        if directional:
            assert metrics[f"{p}/positive_norm_bias/x"] == pytest.approx(
                3.0 / n_degrees, rel=1e-6
            )
            assert metrics[f"{p}/negative_norm_bias/x"] == pytest.approx(
                -0.75 / n_degrees, rel=1e-6
            )
        else:
            assert f"{p}/positive_norm_bias/x" not in metrics


def test_annual_rmse_is_not_reported_with_report_rmse_false():
    n = 4 * 366
    time = _times("2000-01-01", n)[None]
    values = torch.ones(1, n, 4, N_LON, dtype=torch.float64)
    diag = AnnualDiagnostic(ops=OPS, names=["x"], timestep=SIX_HOURS, report_rmse=False)
    diag.record(prediction={"x": values}, target={"x": values + 1.0}, time=time)
    assert diag.complete_years() == [2000]
    assert diag.get_metrics() == {}
    assert diag.get_dataset()["x"].shape[-1] == 1  # the means are still written
