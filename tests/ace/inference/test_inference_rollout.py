import pytest
import torch
from stepper_builders import batch, build_stepper

from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.inference.rollout import run_rollout


def test_chunked_rollout_returns_the_last_lead_of_a_plain_rollout():
    stepper = build_stepper(corrector={"conserve_global_mean_names": ["a"]})
    data = batch(n_samples=2, n_times=6)
    aggregator = RolloutMetricsAggregator(
        gridded_operations=stepper.dataset_info.gridded_operations,
        names=stepper.out_names,
        conserved_names=["a"],
        n_lead_times=5,
    )
    final = run_rollout(
        stepper=stepper,
        batch=data,
        n_forward_steps=5,
        forward_steps_in_memory=2,
        aggregator=aggregator,
    )
    with torch.no_grad():
        outputs = list(
            stepper.rollout(
                initial_condition={n: data.data[n][:, 0] for n in ["a", "b"]},
                forcing={"f": data.data["f"]},
                n_forward_steps=5,
                detach_uncorrected=True,
            )
        )
    for name in ["a", "b"]:
        torch.testing.assert_close(final[name], outputs[-1].output[name])
    ops = stepper.dataset_info.gridded_operations
    expected = ops.area_weighted_rmse(outputs[-1].output["b"], data.data["b"][:, 5])
    pooled = torch.sqrt((expected**2).mean()).item()
    assert aggregator.get_metrics()["rmse/b/lead_5"] == pytest.approx(pooled, rel=1e-5)
