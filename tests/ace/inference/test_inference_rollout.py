import pytest
import torch
from stepper_builders import batch, build_stepper

from fme.ace.data.batch import BatchData
from fme.ace.evaluation.metrics import RolloutMetricsAggregator
from fme.ace.inference.rollout import run_rollout


class _Windows:
    """The ``InferenceData`` interface over an in-memory batch."""

    def __init__(self, data):
        self._data = data

    def window(self, first_time, n_times):
        window = slice(first_time, first_time + n_times)
        return BatchData(
            {k: v[:, window] for k, v in self._data.data.items()},
            self._data.time[:, window],
        )

    def windows(self, ranges):
        for first_time, n_times in ranges:
            yield self.window(first_time, n_times)


def test_chunked_rollout_returns_the_last_lead_of_a_plain_rollout():
    stepper = build_stepper(corrector={"conserve_global_mean_names": ["a"]})
    data = batch(n_samples=2, n_times=6)
    aggregator = RolloutMetricsAggregator(
        gridded_operations=stepper.dataset_info.gridded_operations,
        names=stepper.out_names,
        conserved_names=["a"],
        n_lead_times=5,
    )
    chunk_leads = []

    def on_chunk(chunk):
        chunk_leads.append((chunk.lead_start, chunk.n_leads))
        aggregator.record(
            lead_start=chunk.lead_start,
            prediction=chunk.prediction,
            target={n: chunk.data[n] for n in stepper.out_names},
            initial_condition=chunk.initial_condition,
            corrections=chunk.corrections,
        )

    final = run_rollout(
        stepper=stepper,
        data=_Windows(data),
        n_forward_steps=5,
        forward_steps_in_memory=2,
        on_chunk=on_chunk,
    )
    assert chunk_leads == [(1, 2), (3, 2), (5, 1)]
    with torch.no_grad():
        outputs = list(
            stepper.rollout(
                initial_condition={n: data.data[n][:, 0] for n in ["a", "b"]},
                forcing={"f": data.data["f"]},
                n_forward_steps=5,
                detach_uncorrected=True,
            )
        )
    for name in stepper.prognostic_names:
        torch.testing.assert_close(final.state[name], outputs[-1].output[name])
    ops = stepper.dataset_info.gridded_operations
    expected = ops.area_weighted_rmse(outputs[-1].output["b"], data.data["b"][:, 5])
    pooled = torch.sqrt((expected**2).mean()).item()
    assert aggregator.get_metrics()["rmse/b/lead_5"] == pytest.approx(pooled, rel=1e-5)
