"""``num_data_workers`` of inference and evaluator loaders: chunks read in worker processes."""

import multiprocessing
import os

import numpy as np
import pytest
import torch
from ace_checkpoint_builders import ace_checkpoint, ace_data

from fme.ace.data.netcdf_dataset import XarrayDataConfig
from fme.ace.evaluate.config import EvaluatorConfig
from fme.ace.evaluate.main import load_stepper
from fme.ace.evaluation.aggregator_config import InferenceEvaluatorAggregatorConfig
from fme.ace.evaluation.rollout_evaluation import RolloutEvaluation
from fme.ace.inference.data import InferenceData, StartIndices
from fme.core.config_loading import ConfigError, from_dict_strict


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return ace_data(tmp_path_factory.mktemp("workers") / "data", n_times=24)


def _data(paths, num_data_workers: int) -> InferenceData:
    return InferenceData(
        XarrayDataConfig(data_path=str(paths.data_dir)),
        start_indices=StartIndices(first=1, n_initial_conditions=3, interval=4),
        names=["PRESsfc", "DSWRFtoa"],
        n_forward_steps=10,
        num_data_workers=num_data_workers,
    )


def test_worker_processes_read_the_same_windows_in_order(paths):
    ranges = [(0, 4), (3, 4), (6, 4), (9, 2)]
    expected = list(_data(paths, 0).windows(ranges))
    with_workers = _data(paths, 2)
    children_while_reading = []
    got = []
    for window in with_workers.windows(ranges):
        children_while_reading.append(
            {p.pid for p in multiprocessing.active_children()} - {os.getpid()}
        )
        got.append(window)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.time, b.time)
        for name in b.data:
            torch.testing.assert_close(a.data[name], b.data[name], rtol=0, atol=0)
    # the reads happen in two worker processes of a DataLoader
    assert all(len(children) == 2 for children in children_while_reading)


def test_scored_rollout_with_workers_gives_the_same_metrics(paths, tmp_path):
    checkpoint = ace_checkpoint(paths, tmp_path / "ckpt.tar", weight_scale=0.05)
    stepper = load_stepper(checkpoint)

    def evaluate(workers: int) -> dict[str, float]:
        data = InferenceData(
            XarrayDataConfig(data_path=str(paths.data_dir)),
            start_indices=StartIndices(n_initial_conditions=2),
            names=stepper.all_names,
            n_forward_steps=6,
            num_data_workers=workers,
        )
        evaluation = RolloutEvaluation(
            stepper=stepper,
            data=data,
            n_forward_steps=6,
            aggregator_config=InferenceEvaluatorAggregatorConfig(),
        )
        evaluation.run(forward_steps_in_memory=2)
        return evaluation.metrics()

    with_workers = evaluate(2)
    assert len(with_workers) > 100
    assert with_workers == pytest.approx(evaluate(0), rel=0, abs=0, nan_ok=True)


def test_negative_workers_are_refused(paths):
    with pytest.raises(ConfigError, match="num_data_workers must be >= 0"):
        from_dict_strict(
            EvaluatorConfig,
            {
                "experiment_dir": "x",
                "checkpoint_path": "ckpt.tar",
                "loader": {
                    "dataset": {"data_path": str(paths.data_dir)},
                    "num_data_workers": -1,
                },
            },
        )
