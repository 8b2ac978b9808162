"""Two gloo processes take the same optimiser step as one process on the whole batch."""

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from gloo_group import run_in_gloo_group
from stepper_builders import batch, build_stepper, build_train_stepper

from fme.core.distributed import DistributedContext
from fme.core.optimization import OptimizationConfig
from fme.core.parallelize import no_sync_context, wrap_data_parallel

CORRECTOR = {"conserve_global_mean_names": ["a"]}
BOTH_FEATURES = {
    "precorrector_optimization": {},
    "regularization": {"weight": 0.5},
}


def _train_one_step(dist: DistributedContext, case: dict, out_dir: Path) -> None:
    stepper = build_stepper(seed=0, corrector=CORRECTOR)
    stepper.wrap_module(lambda module: wrap_data_parallel(module, dist))
    calls = {"n": 0}
    if dist.is_distributed:

        def counting_allreduce(state, bucket):
            # Synchronous, with the future completed here: a Python callback
            # chained with ``.then`` runs on a gloo thread, which later frees
            # it under the GIL and aborts the process if that happens while
            # the interpreter is exiting.
            calls["n"] += 1
            buffer = bucket.buffer()
            torch_dist.all_reduce(buffer)
            averaged: torch.futures.Future = torch.futures.Future()
            averaged.set_result(buffer / dist.world_size)
            return averaged

        stepper.module.register_comm_hook(None, counting_allreduce)
    training = {"n_forward_steps": 2, "corrector_loss": BOTH_FEATURES}
    train = build_train_stepper(stepper, training)
    optimization = OptimizationConfig(
        optimizer_type="Adam", lr=1e-2, use_gradient_accumulation=case["accumulate"]
    ).build(stepper.module.parameters(), no_sync=no_sync_context(stepper.module))
    global_batch = batch(n_samples=4, n_times=3, seed=5)
    local = dist.local_batch_size(4)
    shard = global_batch.select_samples(dist.rank * local, (dist.rank + 1) * local)
    train.train_on_batch(shard, optimization)
    if dist.is_root:
        torch.save(
            {"params": stepper.base_module.state_dict(), "allreduce_calls": calls["n"]},
            out_dir / f"world{dist.world_size}.pt",
        )


CASES = {"plain": {"accumulate": False}, "accumulated": {"accumulate": True}}


def _train_every_case(dist: DistributedContext, out_dir: Path) -> None:
    for name, case in CASES.items():
        (out_dir / name).mkdir(exist_ok=True)
        _train_one_step(dist, case, out_dir / name)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    run_in_gloo_group(_train_every_case, out_dir, world_size=2)
    return out_dir


@pytest.mark.parametrize("case_name", list(CASES))
def test_two_processes_match_one_process(tmp_path, two_process_results, case_name):
    _train_one_step(
        DistributedContext.single_process(torch.device("cpu")),
        CASES[case_name],
        tmp_path,
    )
    single = torch.load(tmp_path / "world1.pt")
    double = torch.load(two_process_results / case_name / "world2.pt")
    for name, value in single["params"].items():
        torch.testing.assert_close(double["params"][name], value, rtol=0, atol=1e-6)
    initial = build_stepper(seed=0, corrector=CORRECTOR).base_module.state_dict()
    assert any(not torch.equal(initial[n], v) for n, v in single["params"].items()), (
        "the optimiser step changed nothing"
    )
    # one gradient all-reduce per optimiser step (the model fits one bucket)
    assert double["allreduce_calls"] == 1


def test_global_batch_must_divide_world_size():
    dist = DistributedContext(rank=0, world_size=3)
    with pytest.raises(ValueError, match="choose a multiple of 3"):
        dist.local_batch_size(4)


def test_deepcopy_of_stepper_is_independent():
    stepper = build_stepper()
    clone = copy.deepcopy(stepper)
    next(clone.module.parameters()).data.add_(1.0)
    assert not torch.equal(
        next(clone.module.parameters()), next(stepper.module.parameters())
    )
