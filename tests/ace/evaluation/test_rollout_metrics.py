import math

import numpy as np
import pytest
import torch

from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.core.gridded_ops import LatLonOperations

N_LAT, N_LON = 8, 16
LAT = torch.linspace(-78.75, 78.75, N_LAT, dtype=torch.float64)
LON = torch.arange(N_LON, dtype=torch.float64) * 360.0 / N_LON


def make_aggregator(
    names=("a", "b"), conserved=("a",), n_lead_times=4
) -> RolloutMetricsAggregator:
    return RolloutMetricsAggregator(
        gridded_operations=LatLonOperations.from_latitudes(LAT, N_LON),
        names=list(names),
        conserved_names=list(conserved),
        n_lead_times=n_lead_times,
    )


def random_fields(seed: int, batch: int = 3, n_leads: int = 4, names=("a", "b")):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, n_leads, N_LAT, N_LON)
    return {n: torch.randn(shape, generator=gen, dtype=torch.float64) for n in names}


def sin_lon() -> torch.Tensor:
    """``[lat, lon]`` pattern with zero zonal mean and mean square 1/2."""
    return torch.sin(torch.deg2rad(LON))[None, :].expand(N_LAT, N_LON)


def test_rmse_and_bias_of_constant_offset():
    target = random_fields(0)
    ic = {k: v[:, 0] * 0.3 for k, v in target.items()}
    prediction = {"a": target["a"] + 2.5, "b": target["b"] - 0.5}
    agg = make_aggregator()
    agg.record(lead_start=1, prediction=prediction, target=target, initial_condition=ic)
    m = agg.get_metrics()
    for lead in range(1, 5):
        assert m[f"rmse/a/lead_{lead}"] == pytest.approx(2.5, rel=1e-12)
        assert m[f"rmse/b/lead_{lead}"] == pytest.approx(0.5, rel=1e-12)
        assert m[f"bias/a/lead_{lead}"] == pytest.approx(2.5, rel=1e-12)
        assert m[f"bias/b/lead_{lead}"] == pytest.approx(-0.5, rel=1e-12)
    assert m["rmse/a"] == pytest.approx(2.5, rel=1e-12)
    assert m["bias/b"] == pytest.approx(-0.5, rel=1e-12)


def test_rmse_of_zonal_sine_is_amplitude_over_sqrt2_and_unbiased():
    target = random_fields(1)
    ic = {k: v[:, 0] for k, v in target.items()}
    prediction = {k: v + 3.0 * sin_lon() for k, v in target.items()}
    agg = make_aggregator()
    agg.record(lead_start=1, prediction=prediction, target=target, initial_condition=ic)
    m = agg.get_metrics()
    assert m["rmse/a/lead_2"] == pytest.approx(3.0 / math.sqrt(2.0), rel=1e-12)
    assert m["bias/a/lead_2"] == pytest.approx(0.0, abs=1e-12)


def test_rmse_of_latitude_pattern_is_area_weighted():
    target = random_fields(2)
    ic = {k: v[:, 0] for k, v in target.items()}
    pattern = torch.sin(torch.deg2rad(LAT))[:, None].expand(N_LAT, N_LON) ** 2
    prediction = {k: v + pattern for k, v in target.items()}
    agg = make_aggregator()
    agg.record(lead_start=1, prediction=prediction, target=target, initial_condition=ic)
    m = agg.get_metrics()
    weights = np.cos(np.deg2rad(LAT.numpy()))
    values = np.sin(np.deg2rad(LAT.numpy())) ** 2
    expected_bias = (weights * values).sum() / weights.sum()
    expected_rmse = np.sqrt((weights * values**2).sum() / weights.sum())
    # float32 area weights inside LatLonOperations limit the precision.
    assert m["rmse/b/lead_1"] == pytest.approx(expected_rmse, rel=1e-6)
    assert m["bias/b/lead_1"] == pytest.approx(expected_bias, rel=1e-6)
    # Unweighted the answer is different, so the weighting is really applied.
    assert not np.isclose(expected_bias, values.mean(), rtol=0.1)
    assert not np.isclose(expected_rmse, np.sqrt((values**2).mean()), rtol=0.1)


def test_rmse_pools_mse_over_samples():
    target = random_fields(3, batch=2)
    ic = {k: v[:, 0] for k, v in target.items()}
    offsets = torch.tensor([1.0, 3.0], dtype=torch.float64)[:, None, None, None]
    prediction = {k: v + offsets for k, v in target.items()}
    agg = make_aggregator()
    agg.record(lead_start=1, prediction=prediction, target=target, initial_condition=ic)
    m = agg.get_metrics()
    assert m["rmse/a/lead_3"] == pytest.approx(math.sqrt(5.0), rel=1e-12)
    assert m["bias/a/lead_3"] == pytest.approx(2.0, rel=1e-12)


def test_chunked_and_batched_recording_equals_one_shot():
    prediction, target = random_fields(4, batch=4), random_fields(5, batch=4)
    ic = {k: v[:, 0] for k, v in random_fields(6, batch=4).items()}
    corrections = {"a": 0.1 * random_fields(7, batch=4)["a"]}
    one_shot = make_aggregator()
    one_shot.record(
        lead_start=1,
        prediction=prediction,
        target=target,
        initial_condition=ic,
        corrections=corrections,
    )
    chunked = make_aggregator()
    for samples in (slice(2, 4), slice(0, 2)):
        for leads, lead_start in ((slice(2, 4), 3), (slice(0, 1), 1), (slice(1, 2), 2)):

            def sub(d, samples=samples, leads=leads):
                return {k: v[samples, leads] for k, v in d.items()}

            chunked.record(
                lead_start=lead_start,
                prediction=sub(prediction),
                target=sub(target),
                initial_condition={k: v[samples] for k, v in ic.items()},
                corrections=sub(corrections),
            )
    expected, actual = one_shot.get_metrics(), chunked.get_metrics()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], rel=1e-12), key


def test_skill_of_persistence_is_zero_and_of_perfect_forecast_is_one():
    target = random_fields(8)
    ic = {k: v[:, 0] + 0.5 for k, v in random_fields(9).items()}
    persistence = {k: v[:, None].expand(-1, 4, -1, -1) for k, v in ic.items()}
    agg = make_aggregator()
    agg.record(
        lead_start=1, prediction=persistence, target=target, initial_condition=ic
    )
    m = agg.get_metrics()
    assert m["skill/a"] == pytest.approx(0.0, abs=1e-12)
    assert m["skill/b/lead_4"] == pytest.approx(0.0, abs=1e-12)
    assert m["rmse/a/lead_2"] == pytest.approx(m["persistence_rmse/a/lead_2"])

    agg = make_aggregator()
    agg.record(lead_start=1, prediction=target, target=target, initial_condition=ic)
    m = agg.get_metrics()
    assert m["skill/a"] == pytest.approx(1.0, abs=1e-12)
    assert m["skill/b/lead_3"] == pytest.approx(1.0, abs=1e-12)
    assert m["rmse/b"] == 0.0


def test_skill_is_nan_where_persistence_is_exact():
    target = random_fields(10)
    ic = {k: v[:, 0] for k, v in target.items()}
    target = {k: v[:, None].expand(-1, 4, -1, -1) for k, v in ic.items()}
    prediction = {k: v + 1.0 for k, v in target.items()}
    agg = make_aggregator()
    agg.record(lead_start=1, prediction=prediction, target=target, initial_condition=ic)
    m = agg.get_metrics()
    assert math.isnan(m["skill/a/lead_1"])
    assert math.isnan(m["skill/a"])


def test_global_mean_drift():
    ic = {k: v[:, 0] for k, v in random_fields(11).items()}
    target = random_fields(12)
    zero_mean = 0.7 * sin_lon()
    conserving = {k: v[:, None] + zero_mean for k, v in ic.items()}
    conserving = {k: v.expand(-1, 4, -1, -1) for k, v in conserving.items()}
    agg = make_aggregator(conserved=("a", "b"))
    agg.record(lead_start=1, prediction=conserving, target=target, initial_condition=ic)
    m = agg.get_metrics()
    for lead in range(1, 5):
        assert m[f"global_mean_drift/a/lead_{lead}"] == pytest.approx(0.0, abs=1e-12)
    assert m["global_mean_drift/b"] == pytest.approx(0.0, abs=1e-12)

    leads = torch.arange(1, 5, dtype=torch.float64)[None, :, None, None]
    drifting = {k: v + 0.25 * leads for k, v in conserving.items()}
    agg = make_aggregator(conserved=("a",))
    agg.record(lead_start=1, prediction=drifting, target=target, initial_condition=ic)
    m = agg.get_metrics()
    for lead in range(1, 5):
        expected = 0.25 * lead
        assert m[f"global_mean_drift/a/lead_{lead}"] == pytest.approx(expected)
    assert m["global_mean_drift/a"] == pytest.approx(1.0)  # value at the final lead
    assert "global_mean_drift/b" not in m
    ops = LatLonOperations.from_latitudes(LAT, N_LON)
    expected_target = (
        ops.area_weighted_mean(target["a"][:, -1]) - ops.area_weighted_mean(ic["a"])
    ).mean()
    assert m["target_global_mean_drift/a"] == pytest.approx(float(expected_target))


def test_correction_rms():
    target = random_fields(13)
    ic = {k: v[:, 0] for k, v in target.items()}
    corrections = {"a": 2.0 * sin_lon().expand(3, 4, -1, -1)}
    agg = make_aggregator()
    agg.record(
        lead_start=1,
        prediction=target,
        target=target,
        initial_condition=ic,
        corrections=corrections,
    )
    m = agg.get_metrics()
    assert m["correction_rms/a/lead_1"] == pytest.approx(math.sqrt(2.0), rel=1e-12)
    assert m["correction_rms/a"] == pytest.approx(math.sqrt(2.0), rel=1e-12)
    # A variable the corrector left unchanged has zero correction.
    assert m["correction_rms/b"] == 0.0

    agg = make_aggregator()
    agg.record(lead_start=1, prediction=target, target=target, initial_condition=ic)
    assert not any(k.startswith("correction_rms") for k in agg.get_metrics())


def test_partial_leads_curves_and_summaries():
    target = random_fields(14, n_leads=2)
    ic = {k: v[:, 0] for k, v in target.items()}
    prediction = {
        k: v + torch.tensor([1.0, 3.0])[None, :, None, None] for k, v in target.items()
    }
    agg = make_aggregator(n_lead_times=5)
    agg.record(lead_start=2, prediction=prediction, target=target, initial_condition=ic)
    curves = agg.get_curves()
    assert len(curves["rmse/a"]) == 5
    assert math.isnan(curves["rmse/a"][0]) and math.isnan(curves["rmse/a"][3])
    assert curves["rmse/a"][1:3] == pytest.approx([1.0, 3.0])
    assert set(curves) >= {"global_mean_drift/a", "correction_rms/b", "skill/b"}
    assert "global_mean_drift/b" not in curves
    m = agg.get_metrics()
    assert "rmse/a/lead_1" not in m and "rmse/a/lead_4" not in m
    assert m["rmse/a"] == pytest.approx(2.0)
    assert m["global_mean_drift/a"] == pytest.approx(curves["global_mean_drift/a"][2])


def test_merge_and_reduce_states_sum_before_dividing():
    prediction, target = random_fields(15), random_fields(16)
    ic = {k: v[:, 0] for k, v in random_fields(17).items()}
    first, second, both = make_aggregator(), make_aggregator(), make_aggregator()
    first.record(
        lead_start=1,
        prediction={k: v[:1] for k, v in prediction.items()},
        target={k: v[:1] for k, v in target.items()},
        initial_condition={k: v[:1] for k, v in ic.items()},
    )
    second.record(
        lead_start=1,
        prediction={k: v[1:] for k, v in prediction.items()},
        target={k: v[1:] for k, v in target.items()},
        initial_condition={k: v[1:] for k, v in ic.items()},
    )
    both.record(
        lead_start=1, prediction=prediction, target=target, initial_condition=ic
    )
    first.merge_state(second.get_state())
    expected = both.get_metrics()
    for key, value in first.get_metrics().items():
        assert value == pytest.approx(expected[key], rel=1e-12), key

    # Two identical "ranks": the reduced state is doubled and the metrics unchanged
    # (they would change if means were averaged instead of sums).
    before = both.get_state()
    reduced = both.reduced(lambda t: 2.0 * t)
    assert torch.equal(reduced.get_state()["count"], 2.0 * before["count"])
    assert torch.equal(both.get_state()["count"], before["count"])
    for key, value in reduced.get_metrics().items():
        assert value == pytest.approx(expected[key], rel=1e-12), key


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="conserved_names"):
        make_aggregator(conserved=("c",))
    agg = make_aggregator(n_lead_times=4)
    fields = random_fields(18, n_leads=2)
    ic = {k: v[:, 0] for k, v in fields.items()}
    with pytest.raises(ValueError, match="outside 1..4"):
        agg.record(lead_start=4, prediction=fields, target=fields, initial_condition=ic)
    with pytest.raises(ValueError, match="outside 1..4"):
        agg.record(lead_start=0, prediction=fields, target=fields, initial_condition=ic)
    with pytest.raises(ValueError, match="missing variables"):
        agg.record(
            lead_start=1,
            prediction={"a": fields["a"]},
            target=fields,
            initial_condition=ic,
        )
    with pytest.raises(ValueError, match="state keys"):
        agg.merge_state({"count": torch.zeros(4)})
