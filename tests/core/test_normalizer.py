import numpy as np
import pytest
import torch
import xarray as xr

from fme.core.normalizer import (
    NetworkAndLossNormalizationConfig,
    NormalizationConfig,
    StandardNormalizer,
)


def _write_scalars(path, values):
    xr.Dataset({k: ((), np.float64(v)) for k, v in values.items()}).to_netcdf(path)


def test_normalize_denormalize_analytic_and_inverse():
    normalizer = StandardNormalizer(
        means={"a": torch.tensor(2.0), "b": torch.tensor(-1.0)},
        stds={"a": torch.tensor(4.0), "b": torch.tensor(0.5)},
    )
    x = {"a": torch.tensor([2.0, 6.0]), "b": torch.tensor([0.0, -1.5])}
    normed = normalizer.normalize(x)
    torch.testing.assert_close(normed["a"], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(normed["b"], torch.tensor([2.0, -1.0]))
    back = normalizer.denormalize(normed)
    for k in x:
        torch.testing.assert_close(back[k], x[k])
    rebuilt = StandardNormalizer.from_state(normalizer.get_state())
    torch.testing.assert_close(rebuilt.normalize(x)["b"], normed["b"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_variables_get_the_numbers_of_per_variable_normalization(dtype):
    """Bitwise: the same float operations per element, in any axis and order."""
    generator = torch.Generator().manual_seed(0)
    names = ["a", "b", "c"]
    normalizer = StandardNormalizer(
        means={n: torch.randn((), generator=generator) * 100 for n in names},
        stds={n: torch.rand((), generator=generator) * 7 + 0.1 for n in names},
    )
    fields = {
        n: torch.randn(2, 3, 5, 4, generator=generator, dtype=dtype) for n in names
    }
    order = ["c", "a", "b"]
    for dim in (1, 2, -1):
        packed = torch.stack([fields[n] for n in order], dim=dim)
        normed = normalizer.normalize_packed(packed, order, dim=dim)
        expected = normalizer.normalize(fields)
        for i, n in enumerate(order):
            assert torch.equal(normed.select(dim, i), expected[n]), (dim, n)
        back = normalizer.denormalize_packed(normed, order, dim=dim)
        expected_back = normalizer.denormalize(expected)
        for i, n in enumerate(order):
            assert torch.equal(back.select(dim, i), expected_back[n]), (dim, n)
    # analytic: (x - mean) / std of the first variable
    packed = torch.stack([fields[n] for n in order], dim=1)
    manual = (fields["c"] - normalizer.means["c"].to(dtype)) / normalizer.stds["c"].to(
        dtype
    )
    assert torch.equal(normalizer.normalize_packed(packed, order)[:, 0], manual)


def test_packed_axis_must_hold_the_names():
    normalizer = StandardNormalizer(
        means={"a": torch.tensor(0.0)}, stds={"a": torch.tensor(1.0)}
    )
    with pytest.raises(ValueError, match=r"axis 1 .* must hold the 1 variables"):
        normalizer.normalize_packed(torch.zeros(2, 3, 4), ["a"])


def test_non_positive_std_rejected():
    with pytest.raises(ValueError, match="std of 'a' must be positive"):
        StandardNormalizer(
            means={"a": torch.tensor(0.0)}, stds={"a": torch.tensor(0.0)}
        )


def test_files_and_residual_scaling(tmp_path):
    _write_scalars(tmp_path / "means.nc", {"a": 1.0, "b": 2.0, "f": 3.0})
    _write_scalars(tmp_path / "stds.nc", {"a": 10.0, "b": 20.0, "f": 30.0})
    _write_scalars(tmp_path / "res.nc", {"a": 0.1, "b": 0.2, "f": 0.3})
    paths = {
        "global_means_path": str(tmp_path / "means.nc"),
        "global_stds_path": str(tmp_path / "stds.nc"),
    }
    config = NetworkAndLossNormalizationConfig(
        network=NormalizationConfig(**paths),
        residual=NormalizationConfig(
            global_means_path=str(tmp_path / "means.nc"),
            global_stds_path=str(tmp_path / "res.nc"),
        ),
    )
    network = config.get_network_normalizer(["a", "b", "f"])
    assert float(network.stds["b"]) == 20.0
    # b is diagnostic (not residual-scaled); a is prognostic
    loss = config.get_loss_normalizer(["a", "b"], residual_scaled_names=["a"])
    assert float(loss.stds["a"]) == pytest.approx(0.1)
    assert float(loss.stds["b"]) == 20.0
    assert float(loss.means["a"]) == 1.0


def test_missing_variable_in_file_named(tmp_path):
    _write_scalars(tmp_path / "m.nc", {"a": 1.0})
    config = NormalizationConfig(
        global_means_path=str(tmp_path / "m.nc"),
        global_stds_path=str(tmp_path / "m.nc"),
    )
    with pytest.raises(ValueError, match=r"no statistics for \['zz'\]"):
        config.build(["a", "zz"])


def test_paths_must_come_together():
    with pytest.raises(ValueError, match="go together"):
        NormalizationConfig(global_means_path="x.nc")


@pytest.mark.parametrize(
    "means, stds, message",
    [
        ({"a": 1.0}, {"a": 0.0}, r"std of 'a' in .*s\.nc.* must be positive.*got 0"),
        ({"a": 1.0}, {"a": float("nan")}, r"std of 'a' in .*s\.nc.* got nan"),
        ({"a": 1.0}, {"a": float("inf")}, r"std of 'a' in .*s\.nc.* got inf"),
        ({"a": float("nan")}, {"a": 1.0}, r"mean of 'a' in .*m\.nc.* finite.*nan"),
    ],
)
def test_bad_statistics_name_the_file_and_variable(tmp_path, means, stds, message):
    _write_scalars(tmp_path / "m.nc", means)
    _write_scalars(tmp_path / "s.nc", stds)
    config = NormalizationConfig(
        global_means_path=str(tmp_path / "m.nc"),
        global_stds_path=str(tmp_path / "s.nc"),
    )
    with pytest.raises(ValueError, match=message):
        config.build(["a"])


def test_empty_statistics_file_is_named(tmp_path):
    _write_scalars(tmp_path / "m.nc", {"a": 1.0})
    (tmp_path / "s.nc").write_bytes(b"")
    config = NormalizationConfig(
        global_means_path=str(tmp_path / "m.nc"),
        global_stds_path=str(tmp_path / "s.nc"),
    )
    with pytest.raises(ValueError, match=r"s\.nc' is empty \(0 bytes\)"):
        config.build(["a"])
