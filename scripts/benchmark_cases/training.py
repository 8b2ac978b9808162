"""Cases of whole training runs: plots, compile, contention."""

import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmark_cases.common import best, row, run_case, whole_run_seconds
from benchmark_cases.configs import ace_format_config, shallow_water_config


def plots_case(tiny: Path, work: Path, repeats: int) -> tuple[dict[str, Any], str]:
    """Whole short runs with and without the end-of-run training plots."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for r in range(repeats):  # interleaved
        for plot in (True, False):
            config = shallow_water_config(tiny, work / f"plots_{plot}_{r}", None)
            config.update(max_epochs=1, max_steps=4, plot_training=plot)
            config["logging"].update(log_to_file=True, batch_log_interval=1)
            seconds[plot].append(
                whole_run_seconds(config, work / f"plots_{plot}_{r}.yaml")
            )
    with_plots, without = min(seconds[True]), min(seconds[False])
    result = {"with_plots_s": with_plots, "without_plots_s": without}
    row = (
        f"| whole 4-step run: {with_plots:.2f} s with training plots, "
        f"{without:.2f} s with `plot_training: false` (saves "
        f"{with_plots - without:.2f} s) | | | |"
    )
    return result, row


def compile_case(
    work: Path, *, repeats: int, steps: int, warmup: int
) -> tuple[dict[str, Any], list[str]]:
    """The tiny ACE-format case eager and with ``stepper_training.compile``."""
    from fme.ace.data.ace_format_fixture import write_ace_format_dataset

    data = write_ace_format_dataset(
        work / "ace_compile", n_lat=32, n_lon=64, n_levels=2, n_times=400, seed=0
    )
    configs = {}
    for compiled in (False, True):
        config = ace_format_config(data, work / f"compile_{compiled}", 4)
        config["stepper_training"]["compile"] = compiled
        configs[compiled] = config
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for r in range(repeats):  # interleaved
        for compiled, config in configs.items():
            runs[compiled].append(
                run_case(
                    config, work, f"compile_{compiled}{r}", steps=steps, warmup=warmup
                )
            )
    eager, compiled_run = best(runs[False]), best(runs[True])
    rows = [
        row("ACE-format 32x64 SFNO 16x2, eager", eager),
        row("same, stepper_training.compile: true", compiled_run),
        f"| compile: {eager['s_per_step'] / compiled_run['s_per_step']:.2f}x the "
        f"eager speed after warm-up; {warmup} warm-up steps took "
        f"{compiled_run['warmup_s']:.1f} s compiled vs {eager['warmup_s']:.1f} s "
        "eager | | | |",
    ]
    return {"eager": eager, "compiled": compiled_run}, rows


def contention_case(
    work: Path, *, repeats: int, steps: int, warmup: int
) -> tuple[dict[str, Any], list[str]]:
    """The tiny ACE-format case alone and beside one core-bound process."""
    from fme.ace.data.ace_format_fixture import write_ace_format_dataset

    data = write_ace_format_dataset(
        work / "ace_busy", n_lat=32, n_lon=64, n_levels=2, n_times=400, seed=0
    )
    config = ace_format_config(data, work / "busy", 4)
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "beside_busy": []}
    for r in range(repeats):  # interleaved
        runs["alone"].append(
            run_case(config, work, f"alone{r}", steps=steps, warmup=warmup)
        )
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            runs["beside_busy"].append(
                run_case(config, work, f"busy{r}", steps=steps, warmup=warmup)
            )
        finally:
            busy.kill()
            busy.wait()
    alone, beside = best(runs["alone"]), best(runs["beside_busy"])
    ratio = beside["s_per_step"] / alone["s_per_step"]
    rows = [
        row("ACE-format 32x64 SFNO 16x2, alone", alone),
        row("same, beside one core-bound process", beside),
        f"| beside a core-bound process: {ratio:.2f}x the time alone | | | |",
    ]
    return {"alone": alone, "beside_busy": beside, "ratio": ratio}, rows
