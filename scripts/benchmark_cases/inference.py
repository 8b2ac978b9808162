"""The ``long_inference`` case: peak memory of long inference rollouts."""

import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmark_cases.common import BENCHMARK_SCRIPT, own_peak_rss_mb, subprocess_json
from benchmark_cases.configs import ace_format_config


def inference_worker(spec_path: Path) -> None:
    """Run forecast-only inference; print its time and this process's peak RSS."""
    import torch

    from fme.ace.inference.config import InferenceConfig
    from fme.ace.inference.main import run_inference
    from fme.core.config_loading import from_dict_strict

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(1)
    config = from_dict_strict(InferenceConfig, spec["config"])
    start = time.perf_counter()
    run_inference(config)
    elapsed = time.perf_counter() - start
    print(
        "BENCHMARK_RESULT "
        + json.dumps(
            {
                "s_per_step": elapsed / config.n_forward_steps,
                "peak_rss_mb": own_peak_rss_mb(),
                "seconds": elapsed,
            }
        )
    )


def long_inference_case(work: Path) -> tuple[dict[str, Any], list[str]]:
    import torch

    from fme.ace.data.ace_format_fixture import write_ace_format_dataset
    from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset
    from fme.ace.inference.initial_condition import write_state_file
    from fme.ace.train.config import TrainConfig
    from fme.core.checkpoint import save_checkpoint
    from fme.core.config_loading import from_dict_strict

    data = write_ace_format_dataset(
        work / "ace_long", n_lat=32, n_lon=64, n_levels=2, n_times=4100, seed=0
    )
    train = from_dict_strict(
        TrainConfig, ace_format_config(data, work / "long_train", 4)
    )
    dataset = XarrayDataset(
        XarrayDataConfig(data_path=str(data.data_dir), cache_in_memory=False),
        names=data.prognostic,
        n_timesteps=1,
    )
    torch.manual_seed(0)
    stepper = train.stepper.build(dataset_info=dataset.dataset_info)
    with torch.no_grad():  # small steps: a 4000-step rollout stays finite
        for parameter in stepper.module.parameters():
            parameter.mul_(0.05)
    checkpoint = work / "long_ckpt.tar"
    save_checkpoint({"trainable": {"stepper": stepper.get_state()}}, checkpoint)
    state, times = dataset.read_times(0, 1)
    info = dataset.dataset_info
    ic = work / "long_ic.nc"
    write_state_file(
        ic,
        state={n: v for n, v in state.items()},
        times=times,
        lat=info.lat,
        lon=info.lon,
        variable_metadata=info.variable_metadata,
        kind="initial condition",
    )
    results: dict[str, Any] = {}
    rows = []
    for n_steps in (40, 4000):
        config = {
            "experiment_dir": str(work / f"long_{n_steps}"),
            "n_forward_steps": n_steps,
            "forward_steps_in_memory": 40,
            "checkpoint_path": str(checkpoint),
            "logging": {"log_to_screen": False},
            "initial_condition": {"path": str(ic)},
            "forcing_loader": {"dataset": {"data_path": str(data.data_dir)}},
            "data_writer": {"save_prediction_files": False, "save_monthly_files": True},
        }
        spec_path = work / f"long_{n_steps}.json"
        spec_path.write_text(json.dumps({"config": config}))
        result = subprocess_json(
            [
                sys.executable,
                str(BENCHMARK_SCRIPT),
                "--inference-worker",
                str(spec_path),
            ],
            f"long_inference_{n_steps}",
        )
        results[str(n_steps)] = result
        rows.append(
            f"| inference {n_steps} steps, 32x64 SFNO 16x2, 40 steps in memory | "
            f"{result['s_per_step']:.4f} | | {result['peak_rss_mb']:.0f} |"
        )
    ratio = results["4000"]["peak_rss_mb"] / results["40"]["peak_rss_mb"]
    rows.append(f"| peak RSS 4000 steps / 40 steps: {ratio:.3f} | | | |")
    results["rss_ratio"] = ratio
    return results, rows
