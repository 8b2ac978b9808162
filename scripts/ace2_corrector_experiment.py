"""Corrector-aware training with ACE2's full corrector on the toy atmosphere.

Trains ``configs/ace_atmosphere.yaml`` (full ACE2 corrector: dry air,
column moisture budget, frozen clip, energy budget, positivity; prescribed
ocean; next-step shortwave) four ways, with the same optimiser steps, initial
weights and data order per training seed:

- ``plain``: the main loss scores the corrected output;
- ``precorrector``: ``precorrector_optimization: {target: raw}``;
- ``precorrector_reg``: the same plus ``regularization: {weight: 1}``;
- ``inverse``: ``precorrector_optimization: {target: inverse}`` (SIP proxy).

Each final checkpoint is scored on free rollouts from validation initial
conditions: area-weighted RMSE of the corrected prediction at lead 1 and at
the last lead; the RMS correction (loss-normalised, lead 1); the budget
residuals of the *raw* network output at lead 1 (dry-air error against the
initial condition in Pa, column water budget RMS in kg m-2 day-1, global
energy budget in W m-2); and the drift of the conserved quantities of the
corrected state over the rollout (global-mean dry-air pressure, Pa; total
water path, kg m-2) against the data's own drift.

Usage::

    python scripts/ace2_corrector_experiment.py --out runs/ace2_experiment
    python scripts/ace2_corrector_experiment.py --out runs/tiny --steps 10 --seeds 0

Writes ``results.md`` and ``results.json`` into ``--out``; runs go to
``OUT/<variant>_seed<k>`` (replaced), data to ``OUT/data`` (generated once).
"""

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fme.ace import physics
from fme.ace.data.ace_format_fixture import write_ace_format_dataset
from fme.ace.data.loader import DataLoaderConfig, build_data_loader
from fme.ace.stepper.stepper import Stepper
from fme.ace.train.config import load_train_config
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict
from fme.core.trainer import LATEST_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
N_LEVELS = 8
WATER = [f"specific_total_water_{k}" for k in range(N_LEVELS)]
TEMPERATURE = [f"air_temperature_{k}" for k in range(N_LEVELS)]
SCORED = ["PRESsfc", "air_temperature_7", "specific_total_water_7", "PRATEsfc"]
SCORED += ["ULWRFtoa", "surface_temperature"]
CORRECTED = ["PRESsfc", "PRATEsfc", "air_temperature_0", "specific_total_water_0"]
VARIANTS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "precorrector": {"precorrector_optimization": {"target": "raw"}},
    "precorrector_reg": {
        "precorrector_optimization": {"target": "raw"},
        "regularization": {"weight": 1.0},
    },
    "inverse": {"precorrector_optimization": {"target": "inverse"}},
}
DT = 6 * 3600.0
DAY = 86400.0


def train_config(data, experiment_dir: Path, variant: dict | None, seed: int, args):
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={experiment_dir}",
        f"seed={seed}",
        "max_epochs=1000",
        f"max_steps={args.steps}",
        f"train_loader.dataset.data_path={data.data_dir}",
        f"train_loader.dataset.subset={{stop: {args.n_train}}}",
        f"train_loader.batch_size={args.batch_size}",
        f"validation.loader.dataset.data_path={data.data_dir}",
        f"validation.loader.dataset.subset={{start: {args.n_train}}}",
        f"{step}.normalization.network.global_means_path={data.means_path}",
        f"{step}.normalization.network.global_stds_path={data.stds_path}",
        f"{step}.normalization.residual.global_means_path={data.means_path}",
        f"{step}.normalization.residual.global_stds_path={data.residual_stds_path}",
        f"{step}.builder.config.embed_dim={args.embed_dim}",
        f"stepper_training.n_forward_steps={args.n_forward_steps}",
        "logging.log_to_screen=false",
    ]
    if variant is not None:
        overrides.append(f"stepper_training.corrector_loss={json.dumps(variant)}")
    return load_train_config(REPO / "configs" / "ace_atmosphere.yaml", overrides)


def _stack(state, names):
    return torch.stack([state[n].double() for n in names], dim=-1)


def _water_path(state, coordinate):
    return physics.total_water_path(
        _stack(state, WATER),
        coordinate=coordinate,
        surface_pressure=state["PRESsfc"].double(),
    )


def _dry_air(state, coordinate):
    return physics.dry_air_pressure(
        state["PRESsfc"].double(), _stack(state, WATER), coordinate=coordinate
    )


def _energy(state, height, coordinate):
    return physics.total_energy_path(
        _stack(state, TEMPERATURE),
        _stack(state, WATER),
        coordinate=coordinate,
        surface_pressure=state["PRESsfc"].double(),
        surface_height=height.double(),
    )


def _flux(state, toa_down):
    return physics.net_energy_flux_into_atmosphere(
        toa_down_sw=toa_down.double(),
        **{
            key: state[name].double()
            for key, name in [
                ("toa_up_sw", "USWRFtoa"),
                ("toa_up_lw", "ULWRFtoa"),
                ("sfc_down_sw", "DSWRFsfc"),
                ("sfc_up_sw", "USWRFsfc"),
                ("sfc_down_lw", "DLWRFsfc"),
                ("sfc_up_lw", "ULWRFsfc"),
                ("latent_heat_flux", "LHTFLsfc"),
                ("sensible_heat_flux", "SHTFLsfc"),
            ]
        },
        frozen_precipitation_rate=state["total_frozen_precipitation_rate"].double(),
    )


@torch.no_grad()
def evaluate(stepper: Stepper, data, args) -> dict[str, float]:
    """Scores of free rollouts from validation initial conditions."""
    loader = build_data_loader(
        from_dict_strict(
            DataLoaderConfig,
            {
                "dataset": {
                    "data_path": str(data.data_dir),
                    "subset": {"start": args.n_train, "step": args.ic_stride},
                },
                "batch_size": 4,
            },
        ),
        names=stepper.all_names,
        n_timesteps=args.n_leads + 1,
        shuffle=False,
        drop_last=False,
    )
    info = loader.dataset_info
    ops, coordinate = info.gridded_operations, info.vertical_coordinate
    assert coordinate is not None
    mean = ops.area_weighted_mean
    sums: dict[str, float] = {}
    count = 0

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + float(value.double().sum())

    for batch in loader.loader:
        d = batch.data
        n = d["PRESsfc"].shape[0]
        count += n
        initial = {k: v[:, 0] for k, v in d.items()}
        rollout = stepper.rollout(
            initial_condition={k: initial[k] for k in stepper.prognostic_names},
            forcing={k: d[k] for k in stepper.forcing_names},
            n_forward_steps=args.n_leads,
            detach_uncorrected=True,
        )
        for lead, out in enumerate(rollout):
            target = {k: v[:, lead + 1] for k, v in d.items()}
            if lead in (0, args.n_leads - 1):
                for name in SCORED:
                    add(
                        f"mse_lead{lead + 1}/{name}",
                        mean((out.output[name] - target[name]) ** 2),
                    )
            if lead == 0:
                stds = stepper.loss_normalizer.stds
                for name in CORRECTED:
                    correction = (out.output[name] - out.uncorrected[name]) / stds[name]
                    add(f"correction_sq/{name}", mean(correction**2))
                raw = {**out.output, **out.uncorrected}
                add(
                    "raw_dry_air_error_abs",
                    (
                        mean(_dry_air(raw, coordinate))
                        - mean(_dry_air(initial, coordinate))
                    ).abs(),
                )
                tendency = (
                    _water_path(raw, coordinate) - _water_path(initial, coordinate)
                ) / DT
                budget = (
                    raw["LHTFLsfc"].double()
                    / physics.LATENT_HEAT_OF_VAPORIZATION_J_PER_KG
                    - raw["PRATEsfc"].double()
                    + raw["tendency_of_total_water_path_due_to_advection"].double()
                )
                add("raw_water_budget_sq", mean((tendency - budget) ** 2))
                height = target["HGTsfc"]
                gain = (
                    mean(_energy(raw, height, coordinate))
                    - mean(_energy(initial, initial["HGTsfc"], coordinate))
                ) / DT
                add(
                    "raw_energy_budget_abs",
                    (gain - mean(_flux(raw, target["DSWRFtoa"]))).abs(),
                )
            if lead == args.n_leads - 1:
                for key, fn in [
                    ("dry_air", lambda s: mean(_dry_air(s, coordinate))),
                    ("water_path", lambda s: mean(_water_path(s, coordinate))),
                ]:
                    add(f"drift/{key}", (fn(out.output) - fn(initial)).abs())
                    add(f"data_drift/{key}", (fn(target) - fn(initial)).abs())
    result: dict[str, float] = {}
    for key, value in sums.items():
        value /= count
        if key.startswith("mse_"):
            result[key.replace("mse_", "rmse_")] = value**0.5
        elif key.startswith("correction_sq/"):
            result[key.replace("correction_sq/", "correction_rms/")] = value**0.5
        elif key == "raw_water_budget_sq":
            result["raw_water_budget_rms"] = value**0.5
        else:
            result[key] = value
    result["raw_water_budget_rms"] *= DAY  # kg m-2 day-1
    return result


def run_variant(name, variant, *, seed, data, args) -> dict[str, float]:
    experiment_dir = args.out / f"{name}_seed{seed}"
    if experiment_dir.exists():
        shutil.rmtree(experiment_dir)
    config = train_config(data, experiment_dir, variant, seed, args)
    start = time.perf_counter()
    run_training(config)
    seconds = time.perf_counter() - start
    state = load_checkpoint(config.checkpoint_dir / LATEST_CHECKPOINT)
    stepper = Stepper.from_state(state["trainable"]["stepper"])
    stepper.step.module.eval()
    result = evaluate(stepper, data, args)
    result["optimizer_steps"] = float(state["optimization"]["optimizer_steps"])
    result["train_seconds"] = seconds
    print(f"{name} seed {seed}: {seconds:.0f} s", flush=True)
    return result


def markdown_table(results: dict[str, list[dict[str, float]]], n_leads: int) -> str:
    rows = [(f"RMSE {n}, lead 1", f"rmse_lead1/{n}") for n in SCORED]
    rows += [(f"RMSE {n}, lead {n_leads}", f"rmse_lead{n_leads}/{n}") for n in SCORED]
    rows += [(f"correction RMS {n}", f"correction_rms/{n}") for n in CORRECTED]
    rows += [
        ("raw dry-air error (Pa)", "raw_dry_air_error_abs"),
        ("raw column water budget RMS (kg m-2 day-1)", "raw_water_budget_rms"),
        ("raw global energy budget (W m-2)", "raw_energy_budget_abs"),
        (f"dry-air drift, lead {n_leads} (Pa)", "drift/dry_air"),
        (f"water-path drift, lead {n_leads} (kg m-2)", "drift/water_path"),
        (f"data's water-path drift, lead {n_leads}", "data_drift/water_path"),
    ]
    variants = list(results)
    lines = [
        "| metric | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for label, key in rows:
        cells = []
        for variant in variants:
            values = torch.tensor([r[key] for r in results[variant]])
            cell = f"{float(values.mean()):.3g}"
            if len(values) > 1:
                cell += f" ± {float(values.std()):.2g}"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--n-forward-steps", type=int, default=2)
    parser.add_argument("--n-times", type=int, default=160, help="times of data")
    parser.add_argument("--n-train", type=int, default=120, help="training times")
    parser.add_argument("--n-leads", type=int, default=20, help="rollout length")
    parser.add_argument("--ic-stride", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = write_ace_format_dataset(
        args.out / "data", n_lat=16, n_lon=32, n_levels=N_LEVELS, n_times=args.n_times
    )
    start = time.perf_counter()
    results = {
        name: [
            run_variant(name, variant, seed=seed, data=data, args=args)
            for seed in args.seeds
        ]
        for name, variant in VARIANTS.items()
    }
    note = (
        f"Toy atmosphere 16x32, {N_LEVELS} levels; configs/ace_atmosphere.yaml with "
        f"SFNO embed_dim {args.embed_dim}; {args.steps} optimiser steps of batch "
        f"{args.batch_size} x {args.n_forward_steps} forward steps per run; mean ± "
        f"std over seeds {args.seeds}; {time.perf_counter() - start:.0f} s in total."
    )
    text = f"{markdown_table(results, args.n_leads)}\n\n{note}\n"
    print(text)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
