"""One ACE2-size training step of the SFNO network; prints one JSON line.

The network is ACE2's (``SphericalFourierNeuralOperatorNet``, ``dhconv``,
384 channels, 8 layers by default, ``filter_type: linear``, instance norm,
MLP) on a 180x360 grid, with ACE2's 39 input and 44 output channels, batch 1.
The script runs with either implementation:

- ``--impl fme``: this project's network (run with the checkout on
  ``PYTHONPATH``);
- ``--impl reference``: the released ``fme==2026.10.0`` built through its
  module registry from the same builder config, run with that package's
  virtualenv and from outside any checkout (both packages are called ``fme``)::

      cd /tmp && /path/to/ref/venv/bin/python /path/to/scripts/ace2_size_step.py \\
          --impl reference

It times ``--steps`` training steps (forward, mean-squared loss, backward, Adam
step) after one warm-up step, one intra-op thread, and reports the median
seconds per step and the process's peak RSS (``VmHWM``, the high-water
mark). ``scripts/benchmark.py --cases ace2_size`` runs both implementations
in their own processes, interleaved, and prints the ratios.
"""

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from benchmark_cases.common import own_peak_rss_mb

N_IN_CHANNELS = 39
N_OUT_CHANNELS = 44
BUILDER_CONFIG: dict[str, Any] = {
    "embed_dim": 384,
    "filter_type": "linear",
    "hard_thresholding_fraction": 1.0,
    "use_mlp": True,
    "normalization_layer": "instance_norm",
    "num_layers": 8,
    "operator_type": "dhconv",
    "scale_factor": 1,
    "separable": False,
}


def _build(impl: str, config: dict[str, Any], img_shape: tuple[int, int]) -> Any:
    if impl == "fme":
        from fme.ace.models.sfno_config import SphericalFourierNeuralOperatorConfig

        return SphericalFourierNeuralOperatorConfig(**config).build(
            n_in_channels=N_IN_CHANNELS,
            n_out_channels=N_OUT_CHANNELS,
            img_shape=img_shape,
        )
    from fme.ace.registry.registry import ModuleSelector
    from fme.core.dataset_info import DatasetInfo

    selector = ModuleSelector(type="SphericalFourierNeuralOperatorNet", config=config)
    return selector.build(
        n_in_channels=N_IN_CHANNELS,
        n_out_channels=N_OUT_CHANNELS,
        dataset_info=DatasetInfo(img_shape=img_shape),
    ).torch_module


def _step_function(impl: str, net: Any, x: Any, target: Any) -> Callable[[], None]:
    """One training step as each package runs ``optimizer_type: Adam``."""
    if impl == "fme":
        from fme.core.optimization import OptimizationConfig

        optimization = OptimizationConfig(optimizer_type="Adam", lr=1e-4).build(
            net.parameters()
        )

        def step() -> None:
            optimization.accumulate_loss(((net(x) - target) ** 2).mean())
            optimization.step_weights()

        return step
    import torch

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)  # as ACE builds it

    def reference_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        ((net(x) - target) ** 2).mean().backward()
        optimizer.step()

    return reference_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=("fme", "reference"), required=True)
    parser.add_argument("--num-layers", type=int, default=8)
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--n-lat", type=int, default=180)
    parser.add_argument("--n-lon", type=int, default=360)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--profile", default=None, help="write a profiler table here")
    args = parser.parse_args()
    if args.impl == "fme":
        from fme.core.process_resources import restart_with_huge_pages

        restart_with_huge_pages()  # as our entry points, before torch is imported

    import torch

    torch.set_num_threads(1)
    if args.impl == "fme":
        from fme.core.process_resources import configure_process

        configure_process()  # what our entry points apply
    torch.manual_seed(0)
    config = {
        **BUILDER_CONFIG,
        "num_layers": args.num_layers,
        "embed_dim": args.embed_dim,
    }
    img_shape = (args.n_lat, args.n_lon)
    net = _build(args.impl, config, img_shape)
    x = torch.randn(1, N_IN_CHANNELS, *img_shape)
    target = torch.randn(1, N_OUT_CHANNELS, *img_shape)
    step = _step_function(args.impl, net, x, target)

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        with open(args.profile, "w") as f:
            f.write(
                prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            )
    result = {
        "impl": args.impl,
        "s_per_step": sorted(times)[len(times) // 2],
        "peak_rss_mb": own_peak_rss_mb(),
        "n_parameters": sum(p.numel() for p in net.parameters()),
    }
    print("BENCHMARK_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
