"""ACE's normalised metric families and step means, against hand computations.

``mean_norm``, ``time_mean_norm`` (with its ``channel_mean``) and
``step_means`` are computed by ``RolloutDiagnostics`` from chunks of a rollout;
the expected numbers are computed here from the raw tensors.
"""

import datetime
import json

import numpy as np
import pytest
import torch
import xarray as xr
from gloo_group import run_in_gloo_group

from fme.ace.evaluation.aggregator_config import InferenceEvaluatorAggregatorConfig
from fme.ace.evaluation.diagnostics import RolloutDiagnostics
from fme.ace.evaluation.time_mean import TimeMeanDiagnostic
from fme.ace.inference.rollout import RolloutChunk
from fme.core.config_loading import from_dict_strict
from fme.core.gridded_ops import LatLonOperations
from fme.core.normalizer import StandardNormalizer

LAT = torch.tensor([-60.0, -20.0, 20.0, 60.0])
N_LON = 8
OPS = LatLonOperations.from_latitudes(LAT, N_LON)
MEANS = {"x": 3.0, "y": -1.0}
STDS = {"x": 2.0, "y": 0.5}
NORMALIZER = StandardNormalizer(
    means={k: torch.tensor(v) for k, v in MEANS.items()},
    stds={k: torch.tensor(v) for k, v in STDS.items()},
)
N_STEPS = 6


def _random(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).double()


def _weights() -> torch.Tensor:
    w = torch.cos(torch.deg2rad(LAT.double()))[:, None].expand(4, N_LON)
    return w / w.sum()


def _fields():
    pred = {n: _random(i, 3, N_STEPS, 4, N_LON) for i, n in enumerate(MEANS)}
    target = {n: _random(10 + i, 3, N_STEPS, 4, N_LON) for i, n in enumerate(MEANS)}
    ic = {n: _random(20 + i, 3, 4, N_LON) for i, n in enumerate(MEANS)}
    return pred, target, ic


def _diagnostics(
    config: InferenceEvaluatorAggregatorConfig, n_forward_steps: int, **kwargs
) -> RolloutDiagnostics:
    return RolloutDiagnostics(
        config=config,
        names=list(MEANS),
        ops=OPS,
        lat=LAT,
        n_lon=N_LON,
        n_forward_steps=n_forward_steps,
        timestep=datetime.timedelta(hours=6),
        metadata={},
        **kwargs,
    )


def _run(config: InferenceEvaluatorAggregatorConfig) -> RolloutDiagnostics:
    diagnostics = _diagnostics(config, N_STEPS, normalize=NORMALIZER.normalize)
    pred, target, ic = _fields()
    time = np.datetime64("2000-01-01", "ns") + np.arange(N_STEPS) * np.timedelta64(
        6, "h"
    )
    for leads in (slice(0, 4), slice(4, N_STEPS)):  # two chunks
        diagnostics.record(
            RolloutChunk(
                lead_start=leads.start + 1,
                prediction={n: v[:, leads] for n, v in pred.items()},
                data={n: v[:, leads] for n, v in target.items()},
                initial_condition=ic,
                corrections=None,
                time=np.broadcast_to(time[leads], (3, leads.stop - leads.start)),
            )
        )
    return diagnostics


def _config(**kwargs) -> InferenceEvaluatorAggregatorConfig:
    return from_dict_strict(InferenceEvaluatorAggregatorConfig, kwargs)


def test_mean_norm_is_the_rmse_and_bias_of_normalised_fields():
    metrics = _run(_config()).get_metrics()
    pred, target, _ = _fields()
    w = _weights()
    for name in MEANS:
        error = (pred[name] - target[name]) / STDS[name]  # the means cancel
        rmse_per_step = (w * error**2).sum(dim=(-2, -1)).mean(dim=0).sqrt()
        bias_per_step = (w * error).sum(dim=(-2, -1)).mean(dim=0)
        assert metrics[f"mean_norm/rmse/{name}"] == pytest.approx(
            float(rmse_per_step.mean()), rel=1e-6
        )
        assert metrics[f"mean_norm/bias/{name}"] == pytest.approx(
            float(bias_per_step.mean()), rel=1e-6
        )


def test_time_mean_norm_and_its_channel_mean_by_hand():
    metrics = _run(_config()).get_metrics()
    pred, target, _ = _fields()
    w = _weights()
    rmse = {}
    for name in MEANS:
        gen = (pred[name].mean(dim=(0, 1)) - MEANS[name]) / STDS[name]
        tgt = (target[name].mean(dim=(0, 1)) - MEANS[name]) / STDS[name]
        rmse[name] = float((w * (gen - tgt) ** 2).sum().sqrt())
        assert metrics[f"time_mean_norm/rmse/{name}"] == pytest.approx(
            rmse[name], rel=1e-6
        )
    assert metrics["time_mean_norm/rmse/channel_mean"] == pytest.approx(
        (rmse["x"] + rmse["y"]) / 2, rel=1e-6
    )
    only_x = _run(
        _config(time_mean_norm={"target": "norm", "channel_mean_names": ["x"]})
    )
    assert only_x.get_metrics()["time_mean_norm/rmse/channel_mean"] == pytest.approx(
        rmse["x"], rel=1e-6
    )


def test_step_means_at_the_chosen_step_by_hand():
    config = _config(
        step_means=[
            {"step": 5, "target": "denorm"},
            {"step": 5, "target": "norm"},
            {"step": 20},  # beyond the 6-step rollout: skipped, as in ACE
        ]
    )
    metrics = _run(config).get_metrics()
    pred, target, _ = _fields()
    w = _weights()
    norm_rmse = []
    for name in MEANS:
        error = pred[name][:, 4] - target[name][:, 4]  # step 5
        rmse = float((w * error**2).sum(dim=(-2, -1)).mean().sqrt())
        bias = float((w * error).sum(dim=(-2, -1)).mean())
        assert metrics[f"mean_step_5/weighted_rmse/{name}"] == pytest.approx(rmse)
        assert metrics[f"mean_step_5/weighted_bias/{name}"] == pytest.approx(bias)
        assert metrics[f"mean_step_5_norm/weighted_rmse/{name}"] == pytest.approx(
            rmse / STDS[name]
        )
        norm_rmse.append(rmse / STDS[name])
    assert metrics["mean_step_5_norm/weighted_rmse/channel_mean"] == pytest.approx(
        float(np.mean(norm_rmse))
    )
    assert "mean_step_5_norm/weighted_bias/x" not in metrics
    assert not any(k.startswith("mean_step_20") for k in metrics)


def test_strict_step_mean_beyond_the_rollout_is_refused():
    with pytest.raises(ValueError, match="step 20 is beyond the rollout of 6 steps"):
        _run(_config(step_means=[{"step": 20, "strict": True}]))


def test_normalised_families_write_their_diagnostics_files(tmp_path):
    diagnostics = _run(_config(step_means=[{"step": 2, "target": "norm"}]))
    paths = {p.name for p in diagnostics.write(tmp_path)}
    assert {
        "mean_norm_diagnostics.nc",
        "time_mean_norm_diagnostics.nc",
        "mean_step_2_norm_diagnostics.nc",
    } <= paths
    metrics = diagnostics.get_metrics()
    with xr.open_dataset(tmp_path / "mean_norm_diagnostics.nc") as ds:
        assert ds["weighted_rmse-x"].shape == (N_STEPS,)
        assert float(ds["weighted_rmse-x"].mean()) == pytest.approx(
            metrics["mean_norm/rmse/x"]
        )
    with xr.open_dataset(tmp_path / "mean_step_2_norm_diagnostics.nc") as ds:
        assert float(ds["weighted_rmse-channel_mean"]) == pytest.approx(
            metrics["mean_step_2_norm/weighted_rmse/channel_mean"]
        )


def test_disabled_families_are_not_computed():
    config = _config(
        mean_norm={"target": "norm", "enabled": False},
        time_mean_norm={"target": "norm", "enabled": False},
        step_means=[],
    )
    metrics = _run(config).get_metrics()
    assert not any(
        k.startswith(("mean_norm", "time_mean_norm", "mean_step")) for k in metrics
    )


@pytest.mark.parametrize(
    "block, message",
    [
        ({"mean_norm": {"target": "denorm"}}, "mean_norm.target must be 'norm'"),
        ({"time_mean_norm": {"target": "denorm"}}, "time_mean_norm.target must be"),
        (
            {"mean_denorm": {"enabled": False}},
            "not supported here: aggregator.mean_denorm",
        ),
        ({"mean_norm": {"target": "norm", "variables": ["x"]}}, "not supported here"),
        ({"time_mean_norm": {"target": "norm", "name": "tm"}}, "not supported here"),
        (
            {"time_mean_norm": {"target": "norm", "reference_data": "ref.nc"}},
            "not supported here: aggregator.time_mean_norm.reference_data",
        ),
        ({"step_means": [{"step": 0}]}, "step must be >= 1"),
        ({"ensembles": [{"target": "raw"}]}, "ensembles target 'raw' is unknown"),
    ],
)
def test_bad_metric_settings_are_refused(block, message):
    with pytest.raises(ValueError, match=message):
        _config(**block)


def test_ace_default_aggregator_families_are_typed():
    config = _config()
    assert [(s.step, s.target, s.name) for s in config.step_means] == [
        (20, "denorm", "mean_step_20"),
        (20, "norm", "mean_step_20_norm"),
    ]
    assert [e.step for e in config.ensembles] == [20]
    assert config.time_mean_norm.enabled and config.mean_norm.enabled


def _time_mean_norm(names: list[str]) -> TimeMeanDiagnostic:
    return TimeMeanDiagnostic(
        ops=OPS, names=names, name="time_mean_norm", channel_mean_names=names
    )


def _record_samples(diagnostic: TimeMeanDiagnostic, samples: list[int]) -> None:
    pred, target, _ = _fields()
    if samples:
        diagnostic.record(
            prediction={n: v[samples] for n, v in pred.items()},
            target={n: v[samples] for n, v in target.items()},
            time=None,
        )


def _reduce_on_ranks(dist, out_path) -> None:
    split = _time_mean_norm(list(MEANS))  # samples 0, 1 on rank 0 and 2 on rank 1
    _record_samples(split, [0, 1] if dist.rank == 0 else [2])
    split.reduce(dist.reduce_sum)
    lopsided = _time_mean_norm(list(MEANS))  # rank 1 records nothing
    _record_samples(lopsided, [0, 1, 2] if dist.rank == 0 else [])
    lopsided.reduce(dist.reduce_sum)
    if dist.rank == 1:
        out_path.write_text(
            json.dumps([split.get_metrics(), lopsided.get_metrics()], indent=1)
        )


def test_time_mean_norm_summed_over_ranks_equals_one_process(tmp_path):
    out = tmp_path / "metrics.json"
    run_in_gloo_group(_reduce_on_ranks, out, world_size=2)
    whole = _time_mean_norm(list(MEANS))
    _record_samples(whole, [0, 1, 2])
    expected = whole.get_metrics()
    for metrics in json.loads(out.read_text()):
        assert metrics == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "block", ["zonal_mean", "histogram", "power_spectrum", "seasonal", "annual"]
)
def test_map_diagnostics_keep_ace_default_names(block):
    assert getattr(_config(), block).name == block
    assert getattr(_config(**{block: {"name": block}}), block).name == block
    with pytest.raises(
        ValueError, match=f"not supported here: aggregator.{block}.name"
    ):
        _config(**{block: {"name": "other"}})


def test_a_run_long_enough_for_ace_climate_indices_says_they_are_missing(caplog):
    def build(n_forward_steps: int) -> None:
        _diagnostics(_config(), n_forward_steps)

    with caplog.at_level("WARNING"):
        build(4 * 730)  # two years: ACE computes no index either
        assert "enso_index" not in caplog.text
        build(4 * 731)
        assert "enso_index, enso_coefficient and ipo_index are not computed" in (
            caplog.text
        )
