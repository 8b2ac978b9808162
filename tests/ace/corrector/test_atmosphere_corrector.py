"""Tests of the atmosphere corrector's constraints, order, gradients and config."""

import numpy as np
import pytest
import torch

from fme.ace.corrector.atmosphere import (
    AtmosphereCorrector,
    AtmosphereCorrectorConfig,
    ConserveDryAir,
    RescaleToGlobalMean,
    ShiftToGlobalMean,
)
from fme.ace.corrector.operations import seeded_context
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

N_LAT, N_LON, BATCH = 8, 16, 3
WATER = [f"specific_total_water_{k}" for k in range(3)]
OUT_NAMES = ["PRESsfc", *WATER, "PRATEsfc", "TMP2m", "UGRD10m"]


def make_ops(n_lat: int = N_LAT, n_lon: int = N_LON) -> LatLonOperations:
    lat = torch.linspace(-80.0, 80.0, n_lat, dtype=torch.float64)
    weights = torch.cos(torch.deg2rad(lat))[:, None].expand(n_lat, n_lon)
    return LatLonOperations(weights.contiguous())


def numpy_weights() -> np.ndarray:
    lat = np.linspace(-80.0, 80.0, N_LAT)
    weights = np.repeat(np.cos(np.deg2rad(lat))[:, None], N_LON, axis=1)
    return weights / weights.sum()


def global_mean(x: torch.Tensor) -> np.ndarray:
    """Independent area-weighted mean over (lat, lon), per sample."""
    return np.average(
        x.detach().numpy().reshape(x.shape[0], -1),
        weights=numpy_weights().ravel(),
        axis=1,
    )


def make_coordinate() -> HybridSigmaPressureCoordinate:
    return HybridSigmaPressureCoordinate(
        ak=torch.tensor([100.0, 5000.0, 4000.0, 0.0], dtype=torch.float64),
        bk=torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64),
    )


def make_state(
    seed: int, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def randn(scale: float, offset: float = 0.0) -> torch.Tensor:
        noise = torch.randn(BATCH, N_LAT, N_LON, generator=gen, dtype=torch.float64)
        return (offset + scale * noise).to(dtype)

    state = {
        "PRESsfc": randn(1000.0, 1.0e5),
        "PRATEsfc": randn(1.0e-4, 5.0e-5),  # partly negative
        "TMP2m": randn(10.0, 280.0),
        "UGRD10m": randn(5.0),
    }
    for name in WATER:
        state[name] = randn(0.005, 0.008)  # mostly positive, some negative
    return state


def dry_air_pressure_numpy(state: dict[str, torch.Tensor]) -> np.ndarray:
    """``ps - sum_k q_k * dp_k`` written out level by level, independently."""
    ak = make_coordinate().ak.numpy()
    bk = make_coordinate().bk.numpy()
    ps = state["PRESsfc"].detach().double().numpy()
    dry = ps.copy()
    for k, name in enumerate(WATER):
        dp = (ak[k + 1] - ak[k]) + (bk[k + 1] - bk[k]) * ps
        dry -= state[name].detach().double().numpy() * dp
    return dry


def build(out_names: list[str] = OUT_NAMES, **config) -> AtmosphereCorrector:
    return AtmosphereCorrectorConfig(**config).build(
        gridded_operations=make_ops(),
        vertical_coordinate=make_coordinate(),
        out_names=out_names,
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_global_mean_is_conserved_and_only_changed_keys_returned(seed):
    corrector = build(conserve_global_mean_names=["TMP2m", "UGRD10m"])
    input_data, gen_data = make_state(seed), make_state(seed + 100)
    gen_before = {k: v.clone() for k, v in gen_data.items()}
    out = corrector(input_data, gen_data, {})
    assert set(out) == {"TMP2m", "UGRD10m"} == set(corrector.changed_names)
    for name in out:
        np.testing.assert_allclose(
            global_mean(out[name]), global_mean(input_data[name]), rtol=1e-12
        )
        # an additive shift: the correction is uniform in space
        correction = out[name] - gen_data[name]
        torch.testing.assert_close(
            correction, correction[:, :1, :1].expand_as(correction)
        )
    for name, value in gen_data.items():
        assert torch.equal(value, gen_before[name])  # inputs not mutated


def test_global_mean_is_conserved_in_float32():
    corrector = build(conserve_global_mean_names=["TMP2m"])
    input_data = make_state(0, torch.float32)
    out = corrector(input_data, make_state(1, torch.float32), {})
    assert out["TMP2m"].dtype == torch.float32
    np.testing.assert_allclose(
        global_mean(out["TMP2m"]), global_mean(input_data["TMP2m"]), rtol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_force_positive_clamps_at_zero(seed):
    corrector = build(force_positive_names=["PRATEsfc"])
    gen_data = make_state(seed)
    assert gen_data["PRATEsfc"].min() < 0  # the test exercises the clamp
    out = corrector(make_state(seed + 10), gen_data, {})
    assert set(out) == {"PRATEsfc"}
    assert out["PRATEsfc"].min() >= 0
    torch.testing.assert_close(
        out["PRATEsfc"],
        torch.where(gen_data["PRATEsfc"] > 0, gen_data["PRATEsfc"], 0.0),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_positive_and_conserved_variable_satisfies_both(seed):
    corrector = build(
        force_positive_names=["PRATEsfc"], conserve_global_mean_names=["PRATEsfc"]
    )
    input_data, gen_data = make_state(seed), make_state(seed + 10)
    input_data["PRATEsfc"] = input_data["PRATEsfc"].abs()
    out = corrector(input_data, gen_data, {})
    assert set(out) == {"PRATEsfc"}
    assert out["PRATEsfc"].min() >= 0
    np.testing.assert_allclose(
        global_mean(out["PRATEsfc"]), global_mean(input_data["PRATEsfc"]), rtol=1e-12
    )
    clamped = gen_data["PRATEsfc"].clamp(min=0).numpy()
    factor = global_mean(input_data["PRATEsfc"]) / global_mean(torch.tensor(clamped))
    np.testing.assert_allclose(
        out["PRATEsfc"].numpy(), clamped * factor[:, None, None], rtol=1e-12
    )


def test_rescale_of_an_all_negative_prediction_falls_back_to_uniform_mean():
    operation = RescaleToGlobalMean(["x"], gridded_operations=make_ops())
    input_data = {"x": torch.rand(2, N_LAT, N_LON, dtype=torch.float64)}
    gen = (-torch.rand(2, N_LAT, N_LON, dtype=torch.float64)).requires_grad_()
    out = operation(seeded_context([operation], input_data), {"x": gen})["x"]
    expected = torch.tensor(global_mean(input_data["x"]))[:, None, None]
    torch.testing.assert_close(out, expected.expand_as(out))
    out.sum().backward()
    assert gen.grad is not None and torch.isfinite(gen.grad).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dry_air_is_conserved_as_in_ace(seed):
    corrector = build(conserve_dry_air=True)
    input_data, gen_data = make_state(seed), make_state(seed + 10)
    out = corrector(input_data, gen_data, {})
    assert set(out) == {"PRESsfc"}
    corrected = {**gen_data, **out}
    target = (dry_air_pressure_numpy(input_data) * numpy_weights()).sum(axis=(1, 2))
    before = (dry_air_pressure_numpy(gen_data) * numpy_weights()).sum(axis=(1, 2))
    after = (dry_air_pressure_numpy(corrected) * numpy_weights()).sum(axis=(1, 2))
    assert np.abs(before - target).min() > 1.0  # there was something to fix
    np.testing.assert_allclose(after, target, rtol=1e-12)
    # ACE: every column's dry-air pressure moves by the same amount
    change = dry_air_pressure_numpy(corrected) - dry_air_pressure_numpy(gen_data)
    np.testing.assert_allclose(
        change, np.broadcast_to(change[:, :1, :1], change.shape), rtol=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_invariants_hold_together(seed):
    corrector = build(
        force_positive_names=["specific_total_water", "PRATEsfc"],
        conserve_global_mean_names=["specific_total_water_1", "TMP2m"],
        conserve_dry_air=True,
    )
    assert set(corrector.changed_names) == {"PRESsfc", *WATER, "PRATEsfc", "TMP2m"}
    input_data, gen_data = make_state(seed), make_state(seed + 10)
    for name in WATER:
        input_data[name] = input_data[name].abs()
    out = corrector(input_data, gen_data, {})
    assert set(out) == set(corrector.changed_names)
    assert "UGRD10m" not in out
    corrected = {**gen_data, **out}
    for name in [*WATER, "PRATEsfc"]:
        assert corrected[name].min() >= 0
    for name in ["specific_total_water_1", "TMP2m"]:
        np.testing.assert_allclose(
            global_mean(corrected[name]), global_mean(input_data[name]), rtol=1e-12
        )
    # dry air is conserved with the *final* (clamped, rescaled) water
    target = (dry_air_pressure_numpy(input_data) * numpy_weights()).sum(axis=(1, 2))
    after = (dry_air_pressure_numpy(corrected) * numpy_weights()).sum(axis=(1, 2))
    np.testing.assert_allclose(after, target, rtol=1e-12)


def test_corrector_is_differentiable_in_gen_data():
    corrector = build(
        force_positive_names=["specific_total_water"],
        conserve_global_mean_names=["TMP2m", "specific_total_water_0"],
        conserve_dry_air=True,
    )
    gen_data = {k: v.requires_grad_() for k, v in make_state(1).items()}
    out = corrector(make_state(0), gen_data, {})
    sum(v.sum() for v in out.values()).backward()
    for name in ["PRESsfc", "TMP2m", *WATER]:
        grad = gen_data[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradcheck_mean_shift_rescale_and_dry_air():
    ops = make_ops(3, 4)
    input_x = torch.rand(2, 3, 4, dtype=torch.float64)
    gen_x = (torch.rand(2, 3, 4, dtype=torch.float64) + 0.1).requires_grad_()
    shift = ShiftToGlobalMean(["x"], gridded_operations=ops)
    rescale = RescaleToGlobalMean(["x"], gridded_operations=ops)
    assert torch.autograd.gradcheck(
        lambda x: shift(seeded_context([shift], {"x": input_x}), {"x": x})["x"],
        (gen_x,),
    )
    assert torch.autograd.gradcheck(
        lambda x: rescale(seeded_context([rescale], {"x": input_x}), {"x": x})["x"],
        (gen_x,),
    )
    dry = ConserveDryAir(
        gridded_operations=ops,
        vertical_coordinate=make_coordinate(),
        surface_pressure_name="PRESsfc",
        water_names=WATER,
    )

    def state(ps, q):
        return {"PRESsfc": ps, **{n: q * (k + 1) for k, n in enumerate(WATER)}}

    input_state = state(1e5 + 100 * torch.randn(2, 3, 4, dtype=torch.float64), input_x)
    ps = (1e5 + 100 * torch.randn(2, 3, 4, dtype=torch.float64)).requires_grad_()
    q = (0.01 * gen_x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda ps, q: dry(seeded_context([dry], input_state), state(ps, q))["PRESsfc"],
        (ps, q),
    )


def test_mean_shift_jacobian_is_identity_minus_weights():
    ops = make_ops(3, 4)
    shift = ShiftToGlobalMean(["x"], gridded_operations=ops)
    input_x = torch.rand(1, 3, 4, dtype=torch.float64)
    gen_x = torch.rand(1, 3, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(
        lambda x: shift(seeded_context([shift], {"x": input_x}), {"x": x})["x"].reshape(
            -1
        ),
        gen_x,
    ).reshape(12, 12)
    weights = ops.area_weights.reshape(-1)
    expected = torch.eye(12, dtype=torch.float64) - weights[None, :]
    torch.testing.assert_close(jacobian, expected)


def test_prefix_selects_all_levels():
    corrector = build(force_positive_names=["specific_total_water"])
    assert corrector.changed_names == WATER
    corrector = build(force_positive_names=["specific_total_water_2"])
    assert corrector.changed_names == ["specific_total_water_2"]


def test_empty_config_changes_nothing():
    corrector = build()
    assert corrector.changed_names == []
    assert corrector(make_state(0), make_state(1), {}) == {}


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="conserve_global_mean_names") as info:
        build(conserve_global_mean_names=["TMP2m", "not_a_variable"])
    assert "not_a_variable" in str(info.value)
    assert "UGRD10m" in str(info.value)  # lists the allowed out names
    with pytest.raises(ValueError, match="force_positive_names.*'PRATE'"):
        build(force_positive_names=["PRATE"])


def test_dry_air_without_vertical_coordinate_is_a_clear_error():
    with pytest.raises(ValueError, match="conserve_dry_air.*vertical coordinate"):
        AtmosphereCorrectorConfig(conserve_dry_air=True).build(
            gridded_operations=make_ops(), vertical_coordinate=None, out_names=OUT_NAMES
        )


def test_dry_air_names_missing_is_a_clear_error():
    with pytest.raises(ValueError, match="missing: \\['specific_total_water_2'\\]"):
        build(out_names=OUT_NAMES[:3], conserve_dry_air=True)
    with pytest.raises(ValueError, match="missing: \\['PRESsfc'\\]"):
        build(out_names=OUT_NAMES[1:], conserve_dry_air=True)


def test_surface_pressure_cannot_be_fixed_twice():
    with pytest.raises(ValueError, match="PRESsfc.*conserve_global_mean_names"):
        build(conserve_dry_air=True, conserve_global_mean_names=["PRESsfc"])


def test_empty_name_is_rejected_by_config():
    with pytest.raises(ValueError, match="force_positive_names"):
        AtmosphereCorrectorConfig(force_positive_names=[""])


def test_conserved_diagnostic_variable_is_a_clear_error_at_call():
    corrector = build(conserve_global_mean_names=["TMP2m"])
    input_data = make_state(0)
    del input_data["TMP2m"]
    with pytest.raises(ValueError, match="'TMP2m' in input_data"):
        corrector(input_data, make_state(1), {})
