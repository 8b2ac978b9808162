"""Two gloo processes: frozen parameters and L-BFGS steps equal one process."""

from pathlib import Path

import torch
from gloo_group import run_in_gloo_group
from torch import nn

from fme.core.distributed import DistributedContext
from fme.core.freezing import FrozenParameterConfig
from fme.core.optimization import OptimizationConfig
from fme.core.parallelize import no_sync_context, wrap_data_parallel

N_SAMPLES = 8


def _net() -> nn.Sequential:
    # float64: L-BFGS amplifies the rounding differences of a two-rank mean
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _shard(dist: DistributedContext) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(N_SAMPLES, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(N_SAMPLES, 2, generator=generator, dtype=torch.float64)
    local = N_SAMPLES // dist.world_size
    part = slice(dist.rank * local, (dist.rank + 1) * local)
    return x[part], y[part]


def _mean_over_ranks(dist: DistributedContext):
    if not dist.is_distributed:
        return None
    return lambda value: dist.reduce_sum(value) / dist.world_size


def _train(dist: DistributedContext, out_dir: Path) -> None:
    x, y = _shard(dist)
    results = {}
    for name, optimizer in [
        ("adam", {"optimizer_type": "Adam", "lr": 0.05}),
        ("lbfgs", {"optimizer_type": "LBFGS", "lr": 1.0, "kwargs": {"max_iter": 5}}),
    ]:
        net = _net()
        FrozenParameterConfig(include=["0.*"]).apply(net)
        module = wrap_data_parallel(net, dist)
        optimization = OptimizationConfig(**optimizer).build(  # type: ignore[arg-type]
            module.parameters(),
            no_sync=no_sync_context(module),
            mean_over_ranks=_mean_over_ranks(dist),
        )

        def forward(module=module, optimization=optimization) -> None:
            optimization.accumulate_loss(((module(x) - y) ** 2).mean())

        for _ in range(2):
            if optimization.uses_closure:
                optimization.step_with_closure(forward)
            else:
                forward()
                optimization.step_weights()
        results[name] = {
            "state": net.state_dict(),
            "grad_of_frozen": net[0].weight.grad,
            "evaluations": optimization.last_closure_evaluations,
        }
    torch.save(results, out_dir / f"world{dist.world_size}_rank{dist.rank}.pt")


def test_two_processes_equal_one_with_frozen_parameters_and_lbfgs(tmp_path):
    _train(DistributedContext(), tmp_path)
    run_in_gloo_group(_train, tmp_path, world_size=2)
    one = torch.load(tmp_path / "world1_rank0.pt")
    initial = _net().state_dict()
    for rank in range(2):
        two = torch.load(tmp_path / f"world2_rank{rank}.pt")
        for name in ("adam", "lbfgs"):
            state = two[name]["state"]
            assert two[name]["grad_of_frozen"] is None
            assert torch.equal(state["0.weight"], initial["0.weight"])
            assert torch.equal(state["0.bias"], initial["0.bias"])
            assert not torch.equal(state["2.weight"], initial["2.weight"])
            for key, value in one[name]["state"].items():
                torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-7)
        # every rank's line search took the same decisions as one process
        assert two["lbfgs"]["evaluations"] == one["lbfgs"]["evaluations"] > 1
