"""Tests of the corrector's nearest pre-images (local inverses)."""

import pytest
import torch

from fme.ace.corrector.atmosphere import (
    AtmosphereCorrector,
    AtmosphereCorrectorConfig,
    ConserveDryAir,
    ForcePositive,
    RescaleToGlobalMean,
    ShiftToGlobalMean,
)
from fme.ace.corrector.inverse import (
    nearest_clamp_and_scale_preimage,
    nearest_shift_preimage,
)
from fme.ace.corrector.operations import seeded_context
from fme.ace.data.batch import HybridSigmaPressureCoordinate
from fme.core.gridded_ops import LatLonOperations

N_LAT, N_LON, BATCH = 6, 12, 2
WATER = [f"specific_total_water_{k}" for k in range(2)]
OUT_NAMES = ["PRESsfc", *WATER, "PRATEsfc", "TMP2m"]
N_OTHERS = 50


def make_ops() -> LatLonOperations:
    lat = torch.linspace(-75.0, 75.0, N_LAT, dtype=torch.float64)
    weights = torch.cos(torch.deg2rad(lat))[:, None].expand(N_LAT, N_LON)
    return LatLonOperations(weights.contiguous())


OPS = make_ops()
COORDINATE = HybridSigmaPressureCoordinate(
    ak=torch.tensor([200.0, 8000.0, 0.0], dtype=torch.float64),
    bk=torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64),
)


def randn(gen: torch.Generator, scale: float = 1.0, offset: float = 0.0):
    noise = torch.randn(BATCH, N_LAT, N_LON, generator=gen, dtype=torch.float64)
    return offset + scale * noise


def make_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {
        "PRESsfc": randn(gen, 1000.0, 1.0e5),
        "PRATEsfc": randn(gen, 1.0, 0.3),
        "TMP2m": randn(gen, 10.0, 280.0),
    }
    for name in WATER:
        state[name] = randn(gen, 0.005, 0.006)
    return state


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed area-weighted squared distance per sample, over a's keys."""
    return sum(OPS.area_weighted_mean((a[k] - b[k]) ** 2) for k in a)  # type: ignore


def assert_never_closer(others, preimage, raw):
    best = distance(preimage, raw)
    for other in others:
        assert (distance(other, raw) >= best * (1 - 1e-12)).all()


NUDGES = (0.999, 1.001)


def nudged_along_line(preimage, target, names):
    """Pre-images a hair either side of ``preimage`` on its line through ``target``.

    A pre-image set that is a line ``target + a * direction`` contains
    ``target + f * (preimage - target)``; at the optimum no ``f != 1`` is closer.
    """
    return [
        {**preimage, name: target[name] + f * (preimage[name] - target[name])}
        for name in names
        for f in NUDGES
    ]


def test_shift_preimage_is_the_weighted_mean_offset():
    gen = torch.Generator().manual_seed(0)
    raw, target = randn(gen), randn(gen)
    preimage = nearest_shift_preimage(raw, target, gridded_operations=OPS)
    offset = OPS.area_weighted_mean(raw - target, keepdim=True)
    torch.testing.assert_close(preimage, target + offset)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    op = ShiftToGlobalMean(["x"], gridded_operations=OPS)
    input_data, raw = {"x": randn(gen)}, {"x": randn(gen, 2.0)}
    target = op(
        seeded_context([op], input_data), {"x": randn(gen, 3.0)}
    )  # satisfies the constraint
    preimage = op.nearest_preimage(raw, target, seeded_context([op], input_data))
    torch.testing.assert_close(
        op(seeded_context([op], input_data), preimage)["x"], target["x"]
    )
    others = []
    for _ in range(N_OTHERS):
        other = {"x": target["x"] + randn(gen)[:, :1, :1]}
        torch.testing.assert_close(
            op(seeded_context([op], input_data), other)["x"], target["x"]
        )
        others.append(other)
    others += nudged_along_line(preimage, target, ["x"])
    assert_never_closer(others, preimage, raw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clamp_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    op = ForcePositive(["x"])
    raw = {"x": randn(gen)}
    unconstrained = {"x": randn(gen)}
    preimage = op.nearest_preimage(raw, unconstrained, seeded_context([op], {}))
    # C(x~) = C(y*) for any target, and = y* for a constrained one
    torch.testing.assert_close(
        op(seeded_context([op], {}), preimage)["x"], unconstrained["x"].clamp(min=0)
    )
    target = op(seeded_context([op], {}), unconstrained)
    preimage = op.nearest_preimage(raw, target, seeded_context([op], {}))
    torch.testing.assert_close(op(seeded_context([op], {}), preimage)["x"], target["x"])
    others = []
    for _ in range(N_OTHERS):
        other = {"x": torch.where(target["x"] > 0, target["x"], -randn(gen).abs())}
        torch.testing.assert_close(
            op(seeded_context([op], {}), other)["x"], target["x"]
        )
        others.append(other)
    assert_never_closer(others, preimage, raw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clamp_and_rescale_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    op = RescaleToGlobalMean(["x"], gridded_operations=OPS)
    input_data = {"x": randn(gen).abs()}
    raw = {"x": randn(gen, 1.0, 0.5)}
    unconstrained = {"x": randn(gen, 1.0, 0.2)}
    preimage = op.nearest_preimage(raw, unconstrained, seeded_context([op], input_data))
    torch.testing.assert_close(
        op(seeded_context([op], input_data), preimage)["x"],
        op(seeded_context([op], input_data), unconstrained)["x"],
    )
    target = op(seeded_context([op], input_data), unconstrained)
    preimage = op.nearest_preimage(raw, target, seeded_context([op], input_data))
    torch.testing.assert_close(
        op(seeded_context([op], input_data), preimage)["x"], target["x"]
    )
    others = []
    for _ in range(N_OTHERS):
        scale = torch.rand(BATCH, 1, 1, generator=gen, dtype=torch.float64) * 3
        other = {
            "x": torch.where(target["x"] > 0, scale * target["x"], -randn(gen).abs())
        }
        torch.testing.assert_close(
            op(seeded_context([op], input_data), other)["x"], target["x"]
        )
        others.append(other)
    # the scale is a 1D least-squares optimum: nudging it never gets closer
    for factor in NUDGES:
        nudged = torch.where(target["x"] > 0, factor * preimage["x"], preimage["x"])
        others.append({"x": nudged})
    assert_never_closer(others, preimage, raw)


def test_clamp_and_rescale_preimage_without_positive_overlap_is_still_a_preimage():
    op = RescaleToGlobalMean(["x"], gridded_operations=OPS)
    target = torch.zeros(BATCH, N_LAT, N_LON, dtype=torch.float64)
    target[:, 0, 0] = 1.0
    raw = -torch.ones_like(target)  # <t, raw> < 0: no nearest pre-image exists
    input_data = {"x": torch.full_like(target, 0.5)}
    preimage = nearest_clamp_and_scale_preimage(raw, target, gridded_operations=OPS)
    torch.testing.assert_close(
        op(seeded_context([op], input_data), {"x": preimage})["x"],
        op(seeded_context([op], input_data), {"x": target})["x"],
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dry_air_inverse(seed):
    gen = torch.Generator().manual_seed(seed)
    op = ConserveDryAir(
        gridded_operations=OPS,
        vertical_coordinate=COORDINATE,
        surface_pressure_name="PRESsfc",
        water_names=WATER,
    )
    input_data, raw = make_state(gen), make_state(gen)
    target = {**make_state(gen)}
    target.update(op(seeded_context([op], input_data), target))
    preimage = op.nearest_preimage(raw, target, seeded_context([op], input_data))
    torch.testing.assert_close(
        op(seeded_context([op], input_data), {**target, **preimage})["PRESsfc"],
        target["PRESsfc"],
    )
    water = torch.stack([target[n] for n in WATER], dim=-1)
    direction = 1.0 / (1.0 - (water * COORDINATE.bk.diff()).sum(-1))
    others = []
    for _ in range(N_OTHERS):
        step = 500.0 * randn(gen)[:, :1, :1]
        other = {"PRESsfc": target["PRESsfc"] + step * direction}
        corrected = op(seeded_context([op], input_data), {**target, **other})["PRESsfc"]
        torch.testing.assert_close(corrected, target["PRESsfc"])
        others.append(other)
    others += nudged_along_line(preimage, target, ["PRESsfc"])
    assert_never_closer(others, preimage, raw)


def build_full() -> AtmosphereCorrector:
    return AtmosphereCorrectorConfig(
        force_positive_names=["specific_total_water", "PRATEsfc"],
        conserve_global_mean_names=["PRATEsfc", "TMP2m"],
        conserve_dry_air=True,
    ).build(gridded_operations=OPS, vertical_coordinate=COORDINATE, out_names=OUT_NAMES)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_corrector_preimage_maps_onto_corrected_target(seed):
    gen = torch.Generator().manual_seed(seed)
    corrector = build_full()
    input_data, raw, unconstrained = make_state(gen), make_state(gen), make_state(gen)
    input_data["PRATEsfc"] = input_data["PRATEsfc"].abs()
    corrected_target = corrector(input_data, unconstrained, {})
    preimage = corrector.nearest_preimage(raw, unconstrained, input_data)
    assert set(preimage) == set(corrector.changed_names)
    torch.testing.assert_close(
        corrector(input_data, {**raw, **preimage}, {}), corrected_target
    )
    # a target that satisfies the constraints is reproduced exactly
    target = {**unconstrained, **corrected_target}
    preimage = corrector.inverse(raw, target, input_data)
    out = corrector(input_data, {**raw, **preimage}, {})
    torch.testing.assert_close(out, {k: target[k] for k in out})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_corrector_preimage_is_nearest(seed):
    gen = torch.Generator().manual_seed(seed)
    corrector = build_full()
    input_data, raw = make_state(gen), make_state(gen)
    input_data["PRATEsfc"] = input_data["PRATEsfc"].abs()
    raw["PRATEsfc"] = raw["PRATEsfc"] + 0.5
    target = make_state(gen)
    target.update(corrector(input_data, target, {}))
    # outside this regime the clamp-and-rescale pre-image set has no nearest point
    inner = OPS.area_weighted_mean(target["PRATEsfc"] * raw["PRATEsfc"])
    assert (inner > 0).all()
    preimage = corrector.nearest_preimage(raw, target, input_data)
    water = torch.stack([target[n] for n in WATER], dim=-1)
    direction = 1.0 / (1.0 - (water * COORDINATE.bk.diff()).sum(-1))
    others = []
    for _ in range(N_OTHERS):
        scale = 0.2 + 2 * torch.rand(BATCH, 1, 1, generator=gen, dtype=torch.float64)
        other = {
            "PRESsfc": target["PRESsfc"] + 300 * randn(gen)[:, :1, :1] * direction,
            "PRATEsfc": torch.where(
                target["PRATEsfc"] > 0, scale * target["PRATEsfc"], -randn(gen).abs()
            ),
            "TMP2m": target["TMP2m"] + randn(gen)[:, :1, :1],
        }
        for name in WATER:
            other[name] = torch.where(target[name] > 0, target[name], -randn(gen).abs())
        out = corrector(input_data, {**raw, **other}, {})
        torch.testing.assert_close(out, {k: target[k] for k in out})
        others.append(other)
    others += nudged_along_line(preimage, target, ["PRESsfc", "TMP2m"])
    positive = target["PRATEsfc"] > 0
    for f in NUDGES:
        nudged = torch.where(positive, f * preimage["PRATEsfc"], preimage["PRATEsfc"])
        others.append({**preimage, "PRATEsfc": nudged})
    assert_never_closer(others, preimage, raw)
