"""SIP through the corrector on shallow-water data: plain vs pre-corrector training.

Trains the same small SFNO emulator three ways (for each training seed: the
same number of optimiser steps, initial weights and data order), with the
atmosphere corrector conserving the global means of ``geopotential`` (mass,
an additive shift) and ``tracer`` (clamp at zero, then a multiplicative
rescale):

- ``plain``: the main loss scores the corrected output;
- ``precorrector_raw``: ``corrector_loss.precorrector_optimization.target: raw``,
  the raw network output against the data;
- ``precorrector_inverse``: ``target: inverse``, the raw output against the
  data's nearest pre-image under the corrector (SIP proxy loss, ``eta = 1``).

Every run is then scored on the validation trajectories with teacher-forced
one-step predictions and free rollouts. The table reports, per variable, the
area-weighted RMSE of the corrected prediction at lead 1 and at the last lead,
the RMS of the correction in loss-normalised units (the ``correction_rms/<var>``
metric of training), and the fraction of raw tracer outputs below zero (the
points the clamp had to change). The training losses themselves are not
comparable across variants (the inverse variant's is a proxy loss), which is
why the script evaluates the checkpoints itself.

Usage::

    python scripts/corrector_sip_experiment.py --out runs/corrector_sip
    python scripts/corrector_sip_experiment.py --out runs/sip_tiny --preset tiny --steps 20

Writes ``results.md`` (the table) and ``results.json`` into ``--out``, and each
run's experiment directory (``metrics.jsonl``, checkpoints) under it as
``OUT/<variant>_seed<k>`` (replaced if it exists). The dataset is generated into
``OUT/data`` unless ``--data`` points at a complete one.
"""

import argparse
import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from ace_stats_normalization import ace_normalization

from fme.ace.data.loader import DataLoaderConfig, build_data_loader
from fme.ace.data.shallow_water import generate_shallow_water_dataset
from fme.ace.stepper.stepper import Stepper
from fme.ace.train.config import TrainConfig
from fme.ace.train.main import run_training
from fme.core.checkpoint import load_checkpoint
from fme.core.config_loading import from_dict_strict
from fme.core.gridded_ops import LatLonOperations
from fme.core.trainer import LATEST_CHECKPOINT

NAMES = ["geopotential", "eastward_wind", "northward_wind", "tracer"]
CORRECTED = ["geopotential", "tracer"]
VARIANTS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "precorrector_raw": {"precorrector_optimization": {"target": "raw"}},
    "precorrector_inverse": {"precorrector_optimization": {"target": "inverse"}},
}
SHORT = {"geopotential": "Φ", "eastward_wind": "u", "northward_wind": "v"}


def train_config(
    *,
    data_dir: Path,
    experiment_dir: Path,
    corrector_loss: dict[str, Any] | None,
    seed: int,
    args: argparse.Namespace,
) -> TrainConfig:
    """The run's config: ``configs/shallow_water.yaml`` at a smaller size."""
    stats = data_dir / "stats"
    training: dict[str, Any] = {
        "loss": {"type": "MSE"},
        "n_forward_steps": args.n_forward_steps,
    }
    if corrector_loss is not None:
        training["corrector_loss"] = copy.deepcopy(corrector_loss)
    config = {
        "experiment_dir": str(experiment_dir),
        "seed": seed,
        "max_epochs": 1000,
        "max_steps": args.steps,
        "save_checkpoint": True,
        "logging": {
            "log_to_screen": False,
            "log_to_file": True,
            "log_to_wandb": False,
            "batch_log_interval": 25,
        },
        "train_loader": {
            "dataset": {"data_path": str(data_dir / "train")},
            "batch_size": args.batch_size,
        },
        "optimization": {
            "optimizer_type": "AdamW",
            "lr": args.lr,
            "kwargs": {"weight_decay": 1.0e-5},
            "scheduler": {
                "type": "cosine",
                "kwargs": {"total_steps": args.steps, "lr_end": args.lr / 20},
            },
            "max_grad_norm": 1.0,
            "use_gradient_accumulation": True,
        },
        "stepper": {
            "step": {
                "type": "single_module",
                "config": {
                    "builder": {
                        "type": "SphericalFourierNeuralOperatorNet",
                        "config": {
                            "embed_dim": args.embed_dim,
                            "num_layers": args.num_layers,
                        },
                    },
                    "in_names": NAMES,
                    "out_names": NAMES,
                    "normalization": ace_normalization(stats),
                    "residual_prediction": True,
                    "corrector": {
                        "type": "atmosphere_corrector",
                        "config": {
                            "conserve_global_mean_names": CORRECTED,
                            "force_positive_names": ["tracer"],
                        },
                    },
                },
            }
        },
        "stepper_training": training,
    }
    return from_dict_strict(TrainConfig, config, path="config")


class _Scores:
    """Sums of squared errors and correction statistics over a rollout."""

    def __init__(self, n_leads: int, stds: dict[str, float]):
        self.n_leads = n_leads
        self.stds = stds
        self.sq_err = {n: torch.zeros(n_leads, dtype=torch.float64) for n in NAMES}
        self.count = 0
        self.correction_sq = {n: 0.0 for n in CORRECTED}
        self.negative = torch.zeros(n_leads, dtype=torch.float64)
        self.points = torch.zeros(n_leads, dtype=torch.float64)

    def record_step(
        self,
        lead: int,
        *,
        out: Any,
        target: dict[str, torch.Tensor],
        ops: LatLonOperations,
    ) -> None:
        for name in NAMES:
            err = ops.area_weighted_mean((out.output[name] - target[name]) ** 2)
            self.sq_err[name][lead] += err.double().sum()
        raw_tracer = out.uncorrected["tracer"]
        self.negative[lead] += float((raw_tracer < 0).double().sum())
        self.points[lead] += float(raw_tracer.numel())
        if lead == 0:
            self.count += target[NAMES[0]].shape[0]
            for name in CORRECTED:
                correction = out.output[name] - out.uncorrected[name]
                std = self.stds[name]
                self.correction_sq[name] += float(
                    (correction.double() / std).pow(2).mean()
                ) * float(correction.shape[0])

    def summary(self) -> dict[str, float]:
        result: dict[str, float] = {}
        for name in NAMES:
            rmse = (self.sq_err[name] / self.count).sqrt()
            result[f"rmse_lead1/{name}"] = float(rmse[0])
            result[f"rmse_lead{self.n_leads}/{name}"] = float(rmse[-1])
        for name in CORRECTED:
            result[f"correction_rms/{name}"] = (
                self.correction_sq[name] / self.count
            ) ** 0.5
        result["raw_tracer_negative_fraction_lead1"] = float(
            self.negative[0] / self.points[0]
        )
        result["raw_tracer_negative_fraction_all_leads"] = float(
            self.negative.sum() / self.points.sum()
        )
        return result


@torch.no_grad()
def evaluate(
    stepper: Stepper, *, data_dir: Path, n_leads: int, ic_stride: int
) -> dict[str, float]:
    """Score free rollouts of ``n_leads`` steps from validation initial conditions.

    Lead 1 of a rollout is a one-step prediction from data, so its RMSE,
    correction and clamp statistics are teacher-forced one-step numbers.
    """
    loader_config = from_dict_strict(
        DataLoaderConfig,
        {
            "dataset": {
                "data_path": str(data_dir / "validation"),
                "subset": {"step": ic_stride},
            },
            "batch_size": 8,
        },
    )
    data = build_data_loader(
        loader_config,
        names=NAMES,
        n_timesteps=n_leads + 1,
        shuffle=False,
        drop_last=False,
    )
    ops = data.dataset_info.gridded_operations
    stds = {n: float(stepper.loss_normalizer.stds[n]) for n in CORRECTED}
    scores = _Scores(n_leads, stds)
    for batch in data.loader:
        rollout = stepper.rollout(
            initial_condition={n: batch.data[n][:, 0] for n in NAMES},
            forcing={},
            n_forward_steps=n_leads,
            detach_uncorrected=True,
        )
        for lead, out in enumerate(rollout):
            target = {n: batch.data[n][:, lead + 1] for n in NAMES}
            scores.record_step(lead, out=out, target=target, ops=ops)
    return scores.summary()


def run_variant(
    name: str,
    corrector_loss: dict[str, Any] | None,
    *,
    seed: int,
    data_dir: Path,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Train one variant from scratch and evaluate its final checkpoint."""
    experiment_dir = args.out / f"{name}_seed{seed}"
    if experiment_dir.exists() and not args.evaluate_only:
        shutil.rmtree(experiment_dir)  # a fresh run, never a resume of an older one
    config = train_config(
        data_dir=data_dir,
        experiment_dir=experiment_dir,
        corrector_loss=corrector_loss,
        seed=seed,
        args=args,
    )
    start = time.perf_counter()
    if not args.evaluate_only:
        run_training(config)
    seconds = time.perf_counter() - start
    state = load_checkpoint(config.checkpoint_dir / LATEST_CHECKPOINT)
    steps = int(state["optimization"]["optimizer_steps"])
    stepper = Stepper.from_state(state["trainable"]["stepper"])
    stepper.module.eval()
    result = evaluate(
        stepper, data_dir=data_dir, n_leads=args.n_leads, ic_stride=args.ic_stride
    )
    result["train_seconds"] = seconds
    result["optimizer_steps"] = float(steps)
    print(f"{name} seed {seed}: {steps} optimiser steps in {seconds:.0f} s", flush=True)
    return result


def _rows(n_leads: int) -> list[tuple[str, str, str]]:
    """(label, result key, format) of each table row."""
    rows: list[tuple[str, str, str]] = []
    for lead in (1, n_leads):
        for name in NAMES:
            rows.append((f"RMSE {name}, lead {lead}", f"rmse_lead{lead}/{name}", ".4g"))
    for name in CORRECTED:
        rows.append(
            (f"correction RMS {name} (normalised)", f"correction_rms/{name}", ".3g")
        )
    rows.append(("raw tracer < 0, lead 1", "raw_tracer_negative_fraction_lead1", ".4%"))
    rows.append(
        (
            f"raw tracer < 0, leads 1-{n_leads}",
            "raw_tracer_negative_fraction_all_leads",
            ".4%",
        )
    )
    return rows


def markdown_table(results: dict[str, list[dict[str, float]]], n_leads: int) -> str:
    """One row per metric, one column per variant: mean (± std) over seeds."""
    variants = list(results)
    header = "| metric | " + " | ".join(variants) + " |"
    rule = "|---|" + "---:|" * len(variants)
    lines = [header, rule]
    for label, key, fmt in _rows(n_leads):
        cells = []
        for variant in variants:
            values = torch.tensor([r[key] for r in results[variant]])
            cell = format(float(values.mean()), fmt)
            if len(values) > 1:
                std_fmt = ".2%" if fmt.endswith("%") else ".2g"
                cell += " ± " + format(float(values.std()), std_fmt)
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="shallow-water dataset (generated there if incomplete); default OUT/data",
    )
    parser.add_argument("--preset", default="default", choices=["default", "tiny"])
    parser.add_argument("--data-seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2.0e-3)
    parser.add_argument("--embed-dim", type=int, default=16)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--n-forward-steps", type=int, default=1)
    parser.add_argument("--n-leads", type=int, default=8, help="rollout length")
    parser.add_argument(
        "--ic-stride", type=int, default=20, help="validation initial-condition stride"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="training seeds (weights and data order); results are mean ± std",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="score the checkpoints already in OUT/<variant>_seed<k>, no training",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = args.data if args.data is not None else args.out / "data"
    generate_shallow_water_dataset(data_dir, preset=args.preset, seed=args.data_seed)
    start = time.perf_counter()
    results = {
        name: [
            run_variant(name, corrector_loss, seed=seed, data_dir=data_dir, args=args)
            for seed in args.seeds
        ]
        for name, corrector_loss in VARIANTS.items()
    }
    steps = sorted({int(r["optimizer_steps"]) for rs in results.values() for r in rs})
    table = markdown_table(results, args.n_leads)
    note = (
        f"Shallow water ({args.preset} preset, data seed {args.data_seed}); SFNO "
        f"embed_dim {args.embed_dim}, {args.num_layers} layers; {steps} optimiser "
        f"steps of batch {args.batch_size} x {args.n_forward_steps} forward "
        f"step(s); mean ± std over training seeds {args.seeds}; all variants "
        "share initial weights and data order per seed. RMSE: area-weighted, "
        "corrected prediction, validation rollouts from initial conditions every "
        f"{args.ic_stride} samples (lead 1 is a one-step prediction from data). "
        "correction RMS: RMS of corrected - raw at lead 1 divided by the loss "
        "std (the training metric correction_rms/<var>). raw tracer < 0: share "
        "of raw (pre-corrector) tracer points the clamp changed. Total "
        f"{time.perf_counter() - start:.0f} s of training and evaluation with "
        f"{args.threads} threads."
    )
    text = f"{table}\n\n{note}\n"
    print(text)
    (args.out / "results.md").write_text(text)
    with (args.out / "results.json").open("w") as f:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, **results}, f)


if __name__ == "__main__":
    main()
