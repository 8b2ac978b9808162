"""Benchmark: scale-invariant physics (SIP) training on the paper's 2D toy.

Reproduces the characteristic experiment of Holl, Koltun & Thuerey,
"Scale-invariant Learning by Physics Inversion" (NeurIPS 2022), also in the
"Physics-based Deep Learning" book, chapter "Scale Invariant Physics Training".

Physics: ``z = diag(γ/ξ, γ·ξ) · R_φ · x`` with ``γ = 10`` and
``P(x) = (sin z₁, z₂)``. A network ``f(y*; θ)`` (2-32-64-32-2, ReLU) learns to
invert ``P`` for targets ``y* ~ U[−1, 1]²`` (a fresh batch of 100 each step).
``ξ`` makes the problem badly conditioned (``x`` directions scaled by ``ξ^±1``),
``φ`` couples the two directions so that no per-parameter rescaling fixes it.

Methods, all from the same initial weights and seeing the same target batches:

- ``sip``: proxy loss ``½‖x − stopgrad(x̃)‖²`` with ``x̃`` from the saddle-free
  Newton inverse (``fme.core.sip``), Adam (lr 1e-3).
- ``adam``: Adam (lr 1e-3) on ``½‖P(x) − y*‖²``.
- ``sgd``: SGD (lr ``1e-2/ξ²``) on ``½‖P(x) − y*‖²``.

Metric: mean distance, in ``x`` space, from the prediction to the nearest exact
solution (``z₂ = y₂*``; ``z₁`` the branch ``arcsin y₁* + 2πn`` or
``π − arcsin y₁* + 2πn`` nearest the current ``z₁``), on a fixed set of 1,000
evaluation targets.

Writes ``sip_toy.png``, ``results.md``, ``results.csv`` and ``curves.csv`` to
``--out``. Example::

    python scripts/sip_toy_benchmark.py --steps 3000 --out runs/sip_toy
"""

import argparse
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fme.core.sip import SIPConfig

GAMMA = 10.0
BATCH_SIZE = 100
N_EVAL = 1000
METHODS = ("sip", "adam", "sgd")
ADAM_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Problem:
    """The toy physics for one ``(ξ, φ)``; ``matrix`` maps ``x`` to ``z``."""

    xi: float
    phi_deg: float
    matrix: torch.Tensor
    inverse_matrix: torch.Tensor

    @classmethod
    def make(cls, *, xi: float, phi_deg: float) -> "Problem":
        phi = math.radians(phi_deg)
        rotation = torch.tensor(
            [[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]]
        )
        scale = torch.diag(torch.tensor([GAMMA / xi, GAMMA * xi]))
        matrix = scale @ rotation
        return cls(xi, phi_deg, matrix, torch.linalg.inv(matrix))

    def z(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.T

    def physics(self, x: torch.Tensor) -> torch.Tensor:
        z = self.z(x)
        return torch.stack([torch.sin(z[:, 0]), z[:, 1]], dim=-1)

    def solution_distance(self, x: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
        """Per-sample ``x``-space distance to the nearest exact solution."""
        z = self.z(x)
        base = torch.asin(y_star[:, 0])
        candidates = []
        for branch in (base, math.pi - base):
            n = torch.round((z[:, 0] - branch) / (2 * math.pi))
            candidates.append(branch + 2 * math.pi * n)
        both = torch.stack(candidates, dim=-1)
        nearest = both.gather(
            -1, (both - z[:, :1]).abs().argmin(dim=-1, keepdim=True)
        ).squeeze(-1)
        z_star = torch.stack([nearest, y_star[:, 1]], dim=-1)
        return ((z - z_star) @ self.inverse_matrix.T).norm(dim=-1)


def make_network() -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, 32),
        nn.ReLU(),
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 2),
    )


@dataclasses.dataclass
class RunResult:
    method: str
    xi: float
    phi_deg: float
    steps: list[int]
    distances: list[float]
    seconds_per_step: float

    @property
    def final(self) -> float:
        return self.distances[-1]


def train(
    *,
    method: str,
    problem: Problem,
    init_state: dict[str, torch.Tensor],
    steps: int,
    eval_every: int,
    seed: int,
    sip: SIPConfig,
) -> RunResult:
    """Train one method on one problem; returns the evaluation curve."""
    network, step_fn = make_trainer(
        method=method, problem=problem, init_state=init_state, sip=sip
    )
    eval_gen = torch.Generator().manual_seed(seed + 1)
    eval_targets = torch.rand(N_EVAL, 2, generator=eval_gen) * 2 - 1
    batch_gen = torch.Generator().manual_seed(seed + 2)

    def evaluate() -> float:
        with torch.no_grad():
            x = network(eval_targets)
            return problem.solution_distance(x, eval_targets).mean().item()

    curve_steps, distances = [0], [evaluate()]
    train_seconds = 0.0
    for step in range(1, steps + 1):
        y_star = torch.rand(BATCH_SIZE, 2, generator=batch_gen) * 2 - 1
        start = time.perf_counter()
        loss = step_fn(y_star)
        if not math.isfinite(loss):
            raise RuntimeError(f"{method}: non-finite loss at step {step}")
        train_seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            curve_steps.append(step)
            distances.append(evaluate())
    return RunResult(
        method,
        problem.xi,
        problem.phi_deg,
        curve_steps,
        distances,
        train_seconds / steps,
    )


def make_trainer(
    *,
    method: str,
    problem: Problem,
    init_state: dict[str, torch.Tensor],
    sip: SIPConfig,
) -> tuple[nn.Module, Callable[[torch.Tensor], float]]:
    """A network from ``init_state`` and a function doing one optimiser step."""
    network = make_network()
    network.load_state_dict(init_state)
    if method == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            network.parameters(), lr=1e-2 / problem.xi**2
        )
    else:
        optimizer = torch.optim.Adam(network.parameters(), lr=ADAM_LR)
    loss_fn = _loss_function(method, problem, sip)

    def step(y_star: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = loss_fn(network(y_star), y_star)
        loss.backward()
        optimizer.step()
        return loss.item()

    return network, step


def measure_cost_ratio(
    *,
    problem: Problem,
    init_state: dict[str, torch.Tensor],
    sip: SIPConfig,
    rounds: int = 7,
    steps_per_round: int = 100,
) -> float:
    """Median over rounds of (SIP time / Adam time) per optimiser step.

    The two methods alternate in short rounds so that both see the same machine
    load; the median discards rounds disturbed by other processes.
    """
    _, sip_step = make_trainer(
        method="sip", problem=problem, init_state=init_state, sip=sip
    )
    _, adam_step = make_trainer(
        method="adam", problem=problem, init_state=init_state, sip=sip
    )
    y_star = torch.rand(BATCH_SIZE, 2, generator=torch.Generator().manual_seed(0))
    y_star = 2 * y_star - 1
    sip_step(y_star), adam_step(y_star)  # warm-up
    ratios = []
    for _ in range(rounds):
        seconds = {}
        for name, step in (("sip", sip_step), ("adam", adam_step)):
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(y_star)
            seconds[name] = time.perf_counter() - start
        ratios.append(seconds["sip"] / seconds["adam"])
    return sorted(ratios)[len(ratios) // 2]


def _loss_function(
    method: str, problem: Problem, sip: SIPConfig
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if method == "sip":
        return lambda x, y_star: sip.proxy_loss(x, y_star, physics=problem.physics)

    def physics_loss(x: torch.Tensor, y_star: torch.Tensor) -> torch.Tensor:
        return 0.5 * (problem.physics(x) - y_star).pow(2).sum(dim=-1).mean()

    return physics_loss


def write_outputs(results: list[RunResult], out: Path, cost_ratio: float) -> str:
    """Write CSVs, a markdown table and the plot; return the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "xi", "phi_deg", "step", "x_distance"])
        for r in results:
            for s, d in zip(r.steps, r.distances, strict=True):
                writer.writerow([r.method, r.xi, r.phi_deg, s, f"{d:.6e}"])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "xi",
                "phi_deg",
                "method",
                "initial_x_distance",
                "final_x_distance",
                "ms_per_step",
            ]
        )
        for r in results:
            writer.writerow(
                [
                    r.xi,
                    r.phi_deg,
                    r.method,
                    f"{r.distances[0]:.6e}",
                    f"{r.final:.6e}",
                    f"{1e3 * r.seconds_per_step:.4f}",
                ]
            )
    configs = sorted({(r.xi, r.phi_deg) for r in results})
    final = {(r.xi, r.phi_deg, r.method): r.final for r in results}
    initial = {(r.xi, r.phi_deg): r.distances[0] for r in results}
    lines = [
        "| ξ | φ (°) | initial | " + " | ".join(METHODS) + " | adam / sip | ordering |",
        "|---|---|---|" + "---|" * len(METHODS) + "---|---|",
    ]
    for xi, phi in configs:
        values = {m: final[(xi, phi, m)] for m in METHODS}
        order = " < ".join(sorted(METHODS, key=lambda m: values[m]))
        lines.append(
            f"| {xi:g} | {phi:g} | {initial[(xi, phi)]:.3e} | "
            + " | ".join(f"{values[m]:.3e}" for m in METHODS)
            + f" | {values['adam'] / values['sip']:.1f} | {order} |"
        )
    lines.append("")
    lines.append(
        "Mean x-distance to the nearest exact solution on 1,000 fixed targets, "
        f"before training (initial) and after {results[0].steps[-1]} optimiser "
        "steps; same initial weights and target batches for every method."
    )
    lines.append(f"Per-step wall-time cost ratio SIP / Adam: {cost_ratio:.2f}")
    lines.append("")
    lines.extend(expectation_checks(results))
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    _plot(results, configs, out / "sip_toy.png")
    return table


def expectation_checks(results: list[RunResult]) -> list[str]:
    """The book's qualitative claims, each as a PASS/FAIL markdown bullet."""
    final = {(r.xi, r.phi_deg, r.method): r.final for r in results}
    initial = {(r.xi, r.phi_deg, r.method): r.distances[0] for r in results}
    xi_lo = min(r.xi for r in results)
    xi_hi = max(r.xi for r in results)
    phis = sorted({r.phi_deg for r in results if r.xi == xi_hi})
    coupled = [p for p in phis if p >= 10.0]
    checks: list[tuple[str, bool]] = []

    def progress(key: tuple[float, float, str]) -> float:
        return final[key] / initial[key]

    lo = [(xi_lo, 0.0, m) for m in METHODS]
    checks.append(
        (
            f"ξ={xi_lo:g}: every method converges (final/initial: "
            + ", ".join(f"{k[2]} {progress(k):.1e}" for k in lo)
            + " < 0.1)",
            all(progress(k) < 0.1 for k in lo),
        )
    )
    ratio_lo = final[(xi_lo, 0.0, "sip")] / final[(xi_lo, 0.0, "adam")]
    checks.append(
        (
            f"ξ={xi_lo:g}: Adam slightly ahead of SIP (sip/adam = {ratio_lo:.2f})",
            1.0 <= ratio_lo < 10.0,
        )
    )
    hi = {m: progress((xi_hi, 0.0, m)) for m in METHODS}
    checks.append(
        (
            f"ξ={xi_hi:g}, φ=0: only SIP and Adam make progress (final/initial: "
            + ", ".join(f"{m} {v:.2e}" for m, v in hi.items())
            + "; sip, adam < 0.5, sgd > 0.9)",
            hi["sip"] < 0.5 and hi["adam"] < 0.5 and hi["sgd"] > 0.9,
        )
    )
    for p in coupled:
        gap = final[(xi_hi, p, "adam")] / final[(xi_hi, p, "sip")]
        checks.append(
            (
                f"ξ={xi_hi:g}, φ={p:g}: SIP ≥ 10× lower than Adam ({gap:.1f}×)",
                gap >= 10.0,
            )
        )
    if coupled:
        degrade = final[(xi_hi, max(coupled), "adam")] / final[(xi_hi, 0.0, "adam")]
        checks.append(
            (
                f"ξ={xi_hi:g}: Adam degrades > 10× from φ=0 to φ={max(coupled):g} "
                f"({degrade:.1f}×)",
                degrade > 10.0,
            )
        )
    sip_values = [final[(xi_hi, p, "sip")] for p in phis]
    spread = max(sip_values) / min(sip_values)
    checks.append(
        (
            f"ξ={xi_hi:g}: SIP flat in φ (max/min over φ = {spread:.2f} < 2)",
            spread < 2.0,
        )
    )
    return [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]


def _plot(
    results: list[RunResult], configs: list[tuple[float, float]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"sip": "tab:red", "adam": "tab:blue", "sgd": "tab:green"}
    n_panels = len(configs) + 1
    n_cols = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig, grid = plt.subplots(
        n_rows, n_cols, figsize=(4.5 * n_cols, 3.6 * n_rows), squeeze=False
    )
    axes = list(grid.flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    for ax, (xi, phi) in zip(axes, configs, strict=False):
        for r in results:
            if (r.xi, r.phi_deg) == (xi, phi):
                ax.semilogy(
                    r.steps, r.distances, color=colors[r.method], label=r.method
                )
        ax.set_title(f"ξ={xi:g}, φ={phi:g}°")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("x-distance to nearest solution")
        ax.legend()
    ax = axes[n_panels - 1]
    sweep = sorted({phi for xi, phi in configs if xi == max(c[0] for c in configs)})
    xi_max = max(c[0] for c in configs)
    final = {(r.xi, r.phi_deg, r.method): r.final for r in results}
    for m in METHODS:
        ax.semilogy(
            sweep,
            [final[(xi_max, p, m)] for p in sweep],
            "o-",
            color=colors[m],
            label=m,
        )
    ax.set_title(f"final x-distance vs φ (ξ={xi_max:g})")
    ax.set_xlabel("φ (degrees)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/sip_toy"))
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--xis", type=float, nargs="+", default=[1.0, 32.0])
    parser.add_argument(
        "--phis",
        type=float,
        nargs="+",
        default=[0.0, 10.0, 22.5, 45.0],
        help="rotation angles (degrees) swept at the largest ξ",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--eta", type=float, default=1.0, help="SIP Newton step in y")
    parser.add_argument("--max-step", type=float, default=None)
    parser.add_argument("--proxy-norm", default="l2", choices=["l2", "l1"])
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    # the Newton inverse at ξ=32 sees Hessian eigenvalues ~1e6 apart
    torch.set_default_dtype(torch.float64)
    sip = SIPConfig(
        inverse="newton",
        eta=args.eta,
        proxy_norm=args.proxy_norm,
        max_step=args.max_step,
    )
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in make_network().state_dict().items()}
    xi_max = max(args.xis)
    configs = [(xi, 0.0) for xi in args.xis] + [
        (xi_max, phi) for phi in args.phis if phi != 0.0
    ]
    results: list[RunResult] = []
    for xi, phi in configs:
        problem = Problem.make(xi=xi, phi_deg=phi)
        for method in args.methods:
            result = train(
                method=method,
                problem=problem,
                init_state=init_state,
                steps=args.steps,
                eval_every=args.eval_every,
                seed=args.seed,
                sip=sip,
            )
            results.append(result)
            print(
                f"ξ={xi:g} φ={phi:g}° {method:5s} x-distance "
                f"{result.distances[0]:.3e} -> {result.final:.3e} "
                f"({1e3 * result.seconds_per_step:.2f} ms/step)",
                flush=True,
            )
    cost_ratio = measure_cost_ratio(
        problem=Problem.make(xi=xi_max, phi_deg=max(args.phis)),
        init_state=init_state,
        sip=sip,
    )
    if set(args.methods) == set(METHODS):
        print(write_outputs(results, args.out, cost_ratio))
        print(f"wrote {args.out}/results.md, results.csv, curves.csv, sip_toy.png")
    else:
        print(f"per-step cost ratio SIP / Adam: {cost_ratio:.2f}")


if __name__ == "__main__":
    main()
