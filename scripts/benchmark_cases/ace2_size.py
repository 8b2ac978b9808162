"""The ``ace2_size`` case: ACE2's network at 1 degree, ours vs the released one."""

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from benchmark_cases.common import REPO


def _ace2_size_run(
    python: str, impl: str, *, layers: int, steps: int, allocator: str = "tuned"
) -> dict[str, Any]:
    """One ``scripts/ace2_size_step.py`` process, run from outside the checkout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FME_NUM_THREADS": "1"}
    env["FME_ALLOCATOR"] = allocator
    env.pop("PYTHONPATH", None)
    env.pop("GLIBC_TUNABLES", None)  # ours sets its own; the released runs as is
    if impl == "fme":
        env["PYTHONPATH"] = str(REPO)
    command = [python, str(REPO / "scripts" / "ace2_size_step.py"), "--impl", impl]
    command += ["--num-layers", str(layers), "--steps", str(steps)]
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith("BENCHMARK_RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"ace2_size {impl} failed:\n{out.stderr[-4000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


def ace2_size_case(
    reference_python: str | None, *, repeats: int, layers: int, steps: int
) -> tuple[dict[str, Any], list[str]]:
    """ACE2's SFNO (dhconv 384 channels) on 180x360, batch 1: ours vs released."""
    variants = {"fme": ("fme", "tuned"), "fme_system_allocator": ("fme", "system")}
    if reference_python:
        variants["reference"] = ("reference", "tuned")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so drifts in load hit all
        for name, (impl, allocator) in variants.items():
            python = reference_python if impl == "reference" else sys.executable
            assert python is not None
            runs[name].append(
                _ace2_size_run(
                    python, impl, layers=layers, steps=steps, allocator=allocator
                )
            )
    best = {
        name: {
            "s_per_step": min(r["s_per_step"] for r in rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "all_s_per_step": [r["s_per_step"] for r in rs],
        }
        for name, rs in runs.items()
    }
    labels = {
        "fme": "ours",
        "fme_system_allocator": "ours, FME_ALLOCATOR=system",
        "reference": "released fme==2026.10.0",
    }
    rows = [
        f"| ACE2 size: SFNO dhconv 384x{layers} on 180x360, batch 1, {labels[n]} | "
        f"{r['s_per_step']:.2f} | {1 / r['s_per_step']:.3f} | {r['peak_rss_mb']:.0f} |"
        for n, r in best.items()
    ]
    if "reference" in best:
        ref = best["reference"]
        for name in ("fme", "fme_system_allocator"):
            rows.append(
                f"| ACE2 size, {labels[name]} vs released: speed-up "
                f"{ref['s_per_step'] / best[name]['s_per_step']:.2f}x, peak memory "
                f"ratio {best[name]['peak_rss_mb'] / ref['peak_rss_mb']:.2f} | | | |"
            )
    return best, rows
