"""Produce the released-ACE reference files the ACE-compatibility tests compare with.

Run it with a separate virtualenv that has the released ``fme==2026.10.0``
installed (see ``scripts/reference_ace_benchmark.py`` for how to make one),
from *outside* this checkout, so that ``import fme`` finds the released
package::

    cd /tmp && REF_VENV/bin/python REPO/scripts/make_ace_reference.py \\
        --out REPO/tests/ace/ace_compat/data \\
        [--only networks|noise|checkpoint|restart|noise_checkpoint] \\
        [--fixture-data DIR]

``--fixture-data`` (needed by all but ``networks`` and ``noise``) is the
ACE-format fixture written beforehand with this project's venv, from the
checkout: ``python -m fme.ace.data.ace_format_fixture --out DIR --n-lat 8
--n-lon 16 --n-levels 2 --n-times 40 --seed 3``.

It writes, all small (kilobytes):

- ``sfno_<variant>.pt``: for each SFNO variant family, the released
  ``SphericalFourierNeuralOperatorNet`` built from the builder config on a tiny
  grid, with every parameter set to random values, plus a random input and the
  released network's output for it: ``{"builder": {...}, "img_shape",
  "n_in", "n_out", "state_dict", "input", "output"}``.
- ``noise_sfno_<variant>.pt``: the same for ``NoiseConditionedSFNO`` (ACE2S),
  whose output is that for noise drawn from torch's global generator seeded
  with ``noise_seed`` right before the call.
- ``ace_run/``: a training run of the released trainer (``fme.ace.train``)
  for two optimiser steps on the ACE-format fixture data of this repository
  (``fme.ace.data.ace_format_fixture.write_ace_format_dataset`` with the
  parameters in ``ace_run/fixture.json``), SFNO (dhconv) with the dry-air
  corrector and EMA: ``ckpt.tar`` (with optimiser and EMA state),
  ``best_ckpt.tar`` and ``best_inference_ckpt.tar`` (EMA weights,
  ``validate_using_ema: true``), the train
  YAML, the released evaluator's YAML and what it predicted:
  ``evaluator_predictions.pt`` ``{"prediction": {name: [sample, time, lat,
  lon]}, "target": {...}}``, read from its ``autoregressive_predictions.nc``
  and ``autoregressive_target.nc``; and ``last_batch_loss.pt``: the released
  train stepper's loss on its last training batch, the start times of the
  batch's windows and the network weights it had before that step, for the
  fine-tuning test.
- ``ace_run/restart/``: the released inference (``fme.ace.inference``) with
  ``ace_run/ckpt.tar`` on the same fixture data, from the data at times 2 and
  9 for 3 steps: its ``restart.nc`` (which embeds the dry-air reference of the
  initial condition), then 3 more steps from that restart:
  ``continuation.pt`` ``{name: [sample, time, lat, lon]}`` read from the
  second run's ``autoregressive_predictions.nc``. Needs ``ace_run/ckpt.tar``
  (``--only checkpoint`` first).
- ``ace_run_noise/``: the same for ``NoiseConditionedSFNO`` (isotropic noise,
  affine and big-skip norms) trained with ``EnsembleLoss`` and ``n_ensemble:
  2``: ``best_ckpt.tar``, the YAMLs, and ``evaluator_predictions.pt`` from the
  released evaluator run with ``seed`` (its noise stream is then a generator
  seeded with it, threaded through the rollout).
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ace_stats_normalization import ace_normalization

REFERENCE_VERSION = "2026.10.0"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny grids and channel counts: every file stays at a few kilobytes.
NETWORK_VARIANTS: dict[str, dict[str, Any]] = {
    "diagonal": {"operator_type": "diagonal"},
    "dhconv": {"operator_type": "dhconv"},
    "scale_factor_2": {"operator_type": "dhconv", "scale_factor": 2},
    "spectral_layers_2": {"operator_type": "diagonal", "spectral_layers": 2},
    "no_pos_embed": {"operator_type": "dhconv", "pos_embed": False},
    "no_big_skip": {"operator_type": "dhconv", "big_skip": False},
    "equiangular": {"operator_type": "diagonal", "data_grid": "equiangular"},
    "equiangular_scale_factor_2": {
        "operator_type": "dhconv",
        "data_grid": "equiangular",
        "scale_factor": 2,
    },
    "legendre_gauss": {"operator_type": "dhconv", "data_grid": "legendre-gauss"},
    "layer_norm": {"operator_type": "dhconv", "normalization_layer": "layer_norm"},
    "no_norm_relu_no_mlp": {
        "operator_type": "dhconv",
        "normalization_layer": "none",
        "activation_function": "relu",
        "use_mlp": False,
    },
    "encoder_layers_2_threshold": {
        "operator_type": "diagonal",
        "encoder_layers": 2,
        "hard_thresholding_fraction": 0.5,
        "activation_function": "silu",
    },
    "residual_filter_factor_2": {
        "operator_type": "dhconv",
        "residual_filter_factor": 2,
    },
}
NETWORK_COMMON = {"embed_dim": 4, "num_layers": 2}

# NoiseConditionedSFNO (ACE2S): the output for noise drawn from torch's
# global generator seeded with NOISE_SEED right before the call.
NOISE_VARIANTS: dict[str, dict[str, Any]] = {
    "gaussian": {},
    "affine_norms_big_skip_filters": {
        "affine_norms": True,
        "normalize_big_skip": True,
        "filter_residual": True,
        "filter_output": True,
    },
    "isotropic_equiangular": {"noise_type": "isotropic", "data_grid": "equiangular"},
    "no_pos_embed_relu_encoder_2": {
        "pos_embed": False,
        "activation_function": "relu",
        "encoder_layers": 2,
        "use_mlp": False,
    },
}
NOISE_COMMON = {"embed_dim": 4, "num_layers": 2, "noise_embed_dim": 3}
NOISE_SEED = 1234
IMG_SHAPE = (8, 16)
N_IN, N_OUT = 3, 2

FIXTURE = {"n_lat": 8, "n_lon": 16, "n_levels": 2, "n_times": 40, "seed": 3}
N_EVAL_STEPS = 6


def _check_reference_fme() -> None:
    version = importlib.metadata.version("fme")
    if version != REFERENCE_VERSION:
        raise SystemExit(
            f"needs the released fme=={REFERENCE_VERSION}, found fme=={version} in "
            f"{sys.executable}"
        )
    import fme

    if Path(fme.__file__).resolve().is_relative_to(REPO_ROOT):
        raise SystemExit("run from outside the checkout: it imported this repo's fme")


def _save_network_case(
    net: Any,
    *,
    builder_config: dict[str, Any],
    path: Path,
    noise_seed: int | None = None,
) -> None:
    """Give ``net`` random weights, run it on a random input, save all of it.

    With ``noise_seed``, torch's global generator is seeded with it right
    before the call (the noise a stochastic network draws).
    """
    import torch

    with torch.no_grad():
        for param in net.parameters():
            # Random values everywhere (the released init leaves biases at
            # zero and spectral weights tiny, which would hide errors).
            param.copy_(0.5 * torch.randn_like(param))
    x = torch.randn(2, N_IN, *IMG_SHAPE)
    if noise_seed is not None:
        torch.manual_seed(noise_seed)
    with torch.no_grad():
        y = net(x)
    case: dict[str, Any] = {
        "builder": builder_config,
        "img_shape": IMG_SHAPE,
        "n_in": N_IN,
        "n_out": N_OUT,
    }
    if noise_seed is not None:
        case["noise_seed"] = noise_seed
    case["state_dict"] = {k: v.clone() for k, v in net.state_dict().items()}
    case["input"] = x
    case["output"] = y
    torch.save(case, path)
    print(f"wrote {path.name}", flush=True)


def make_networks(out: Path) -> None:
    """Write one ``sfno_<variant>.pt`` per entry of ``NETWORK_VARIANTS``."""
    import torch
    from fme.ace.models.modulus.sfnonet import SphericalFourierNeuralOperatorNet
    from fme.ace.registry.sfno import SphericalFourierNeuralOperatorBuilder

    for i, (name, variant) in enumerate(NETWORK_VARIANTS.items()):
        builder_config = {**NETWORK_COMMON, **variant}
        builder = SphericalFourierNeuralOperatorBuilder(**builder_config)
        torch.manual_seed(100 + i)
        # What the released builder's build() does, without a DatasetInfo.
        net = SphericalFourierNeuralOperatorNet(
            params=builder, in_chans=N_IN, out_chans=N_OUT, img_shape=IMG_SHAPE
        )
        _save_network_case(
            net, builder_config=builder_config, path=out / f"sfno_{name}.pt"
        )


def make_noise_networks(out: Path) -> None:
    """Write one ``noise_sfno_<variant>.pt`` per entry of ``NOISE_VARIANTS``."""
    import torch
    from fme.ace.registry.stochastic_sfno import NoiseConditionedSFNOBuilder
    from fme.core.coordinates import LatLonCoordinates
    from fme.core.dataset_info import DatasetInfo

    for i, (name, variant) in enumerate(NOISE_VARIANTS.items()):
        builder_config = {**NOISE_COMMON, **variant}
        builder = NoiseConditionedSFNOBuilder(**builder_config)
        torch.manual_seed(200 + i)
        lat = torch.linspace(-80.0, 80.0, IMG_SHAPE[0])
        lon = torch.arange(IMG_SHAPE[1]) * 360.0 / IMG_SHAPE[1]
        info = DatasetInfo(horizontal_coordinates=LatLonCoordinates(lat=lat, lon=lon))
        net = builder.build(N_IN, N_OUT, info)
        _save_network_case(
            net,
            builder_config=builder_config,
            path=out / f"noise_sfno_{name}.pt",
            noise_seed=NOISE_SEED,
        )


# Set by ``--fixture-data``: the fixture already written by this project.
FIXTURE_DATA: Path | None = None
# The fixture's module imports this project's package, which the released
# venv does not have, so the data are written beforehand with this project's.
FIXTURE_COMMAND = "python -m fme.ace.data.ace_format_fixture --out DIR " + " ".join(
    f"--{k.replace('_', '-')} {v}" for k, v in FIXTURE.items()
)


def _write_fixture(data_root: Path) -> Path:
    if FIXTURE_DATA is None:
        raise SystemExit(
            f"--fixture-data DIR is needed: write DIR first with {FIXTURE_COMMAND} "
            "(this project's venv, from the checkout)"
        )
    shutil.copytree(FIXTURE_DATA, data_root)
    return data_root


def _train_config(data: Path, experiment_dir: Path) -> dict[str, Any]:
    stats = data / "stats"
    prognostic = ["PRESsfc", "air_temperature_0", "air_temperature_1"]
    prognostic += ["specific_total_water_0", "specific_total_water_1"]
    dataset = {"data_path": str(data / "data")}
    return {
        "experiment_dir": str(experiment_dir),
        "max_epochs": 1,
        "save_checkpoint": True,
        "validate_using_ema": True,
        "ema": {"decay": 0.9},
        "seed": 0,
        "logging": {"log_to_screen": True, "log_to_file": False, "log_to_wandb": False},
        "train_loader": {
            "dataset": {**dataset, "subset": {"stop": 10}},
            "batch_size": 4,
            "num_data_workers": 0,
        },
        "validation": {
            "loader": {
                "dataset": {**dataset, "subset": {"start": 20, "stop": 26}},
                "batch_size": 2,
                "num_data_workers": 0,
            },
        },
        "optimization": {"optimizer_type": "Adam", "lr": 1.0e-2},
        # an inline inference, so best_inference_ckpt.tar is written too
        "inference": {
            "n_forward_steps": 2,
            "forward_steps_in_memory": 2,
            "loader": {
                "dataset": dataset,
                "start_indices": {"first": 20, "n_initial_conditions": 2},
                "num_data_workers": 0,
            },
        },
        "stepper": {
            "step": {
                "type": "single_module",
                "config": {
                    "in_names": prognostic + ["DSWRFtoa", "surface_temperature"],
                    "out_names": prognostic + ["PRATEsfc"],
                    "normalization": ace_normalization(stats),
                    "residual_prediction": True,
                    "builder": {
                        "type": "SphericalFourierNeuralOperatorNet",
                        "config": {
                            "embed_dim": 8,
                            "num_layers": 2,
                            "operator_type": "dhconv",
                            "data_grid": "legendre-gauss",
                        },
                    },
                    "corrector": {
                        "type": "atmosphere_corrector",
                        "config": {"conserve_dry_air": True},
                    },
                },
            },
        },
        "stepper_training": {"loss": {"type": "MSE"}, "n_forward_steps": 2},
    }


def _evaluator_config(data: Path, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    return {
        "experiment_dir": str(out_dir),
        "n_forward_steps": N_EVAL_STEPS,
        "forward_steps_in_memory": 4,
        "checkpoint_path": str(checkpoint),
        "logging": {"log_to_screen": True, "log_to_file": False, "log_to_wandb": False},
        "loader": {
            "dataset": {"data_path": str(data / "data")},
            "start_indices": {"first": 24, "n_initial_conditions": 2, "interval": 3},
            "num_data_workers": 0,
        },
        "data_writer": {"save_prediction_files": True},
    }


def _fresh_dir(path: Path) -> Path:
    """``path`` as an empty directory (what was there is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _run_released(main: Any, config: dict[str, Any], yaml_path: Path) -> None:
    """Write ``config`` to ``yaml_path`` and run a released entry point on it."""
    import yaml

    from fme.core.distributed import Distributed

    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Distributed.context():
        main(str(yaml_path))


def _read_fields(path: Path) -> dict[str, Any]:
    """The ``[sample, time, lat, lon]`` variables of a written netCDF file."""
    import torch
    import xarray as xr

    with xr.open_dataset(path, decode_times=False) as ds:
        return {
            str(n): torch.from_numpy(v.values.copy())
            for n, v in ds.data_vars.items()
            if v.ndim == 4
        }


def _finish_run_dir(run_out: Path, yaml_paths: list[Path], tmp_path: Path) -> None:
    """Make the kept YAMLs' paths placeholders and record the fixture's settings.

    The tests fill the ``TMP`` placeholders in with their own data directory.
    """
    for yaml_path in yaml_paths:
        text = yaml_path.read_text().replace(str(tmp_path), "TMP")
        yaml_path.write_text(text)
    (run_out / "fixture.json").write_text(json.dumps(FIXTURE) + "\n")
    print(f"wrote {run_out}", flush=True)


NOISE_EVAL_SEED = 7


def _noise_train_config(data: Path, experiment_dir: Path) -> dict[str, Any]:
    """ACE2S's form on the same data: NoiseConditionedSFNO, EnsembleLoss."""
    config = _train_config(data, experiment_dir)
    del config["ema"], config["inference"]
    config["validate_using_ema"] = False
    config["train_loader"]["dataset"]["subset"] = {"stop": 6}
    step = config["stepper"]["step"]["config"]
    step["builder"] = {
        "type": "NoiseConditionedSFNO",
        "config": {
            "embed_dim": 8,
            "noise_embed_dim": 4,
            "num_layers": 2,
            "noise_type": "isotropic",
            "affine_norms": True,
            "normalize_big_skip": True,
        },
    }
    config["stepper_training"] = {
        "loss": {
            "type": "EnsembleLoss",
            "kwargs": {"crps_weight": 0.9, "energy_score_weight": 0.1},
        },
        "n_ensemble": 2,
        "n_forward_steps": 2,
    }
    return config


def make_noise_checkpoint(out: Path) -> None:
    """Train a NoiseConditionedSFNO briefly, evaluate it with a seed, keep both.

    The evaluator runs with ``seed``: the released package then draws the
    network's noise from a generator seeded with it and threaded through the
    rollout, so its predictions are reproducible and can be matched draw for
    draw. Only ``best_ckpt.tar`` (no optimiser state) is kept, to stay small.
    """
    import torch
    from fme.ace.inference.evaluator import main as evaluator_main
    from fme.ace.train.train import main as train_main

    run_out = _fresh_dir(out / "ace_run_noise")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = _write_fixture(tmp_path / "data_root")
        experiment = tmp_path / "train"
        train_yaml = run_out / "train.yaml"
        _run_released(train_main, _noise_train_config(data, experiment), train_yaml)
        checkpoint = experiment / "training_checkpoints" / "best_ckpt.tar"
        shutil.copy(checkpoint, run_out / "best_ckpt.tar")
        eval_dir = tmp_path / "eval"
        eval_yaml = run_out / "evaluator.yaml"
        eval_config = _evaluator_config(data, checkpoint, eval_dir)
        eval_config["seed"] = NOISE_EVAL_SEED
        _run_released(evaluator_main, eval_config, eval_yaml)
        prediction = _read_fields(eval_dir / "autoregressive_predictions.nc")
        torch.save({"prediction": prediction}, run_out / "evaluator_predictions.pt")
    _finish_run_dir(run_out, [train_yaml, eval_yaml], tmp_path)


def make_checkpoint(out: Path) -> None:
    """Train two steps with the released trainer, evaluate, keep the results."""
    import torch
    from fme.ace.inference.evaluator import main as evaluator_main
    from fme.ace.train.train import main as train_main

    from fme.ace.stepper import single_module

    run_out = _fresh_dir(out / "ace_run")
    losses: list[dict[str, Any]] = []
    original = single_module.TrainStepper.train_on_batch

    def recording_train_on_batch(stepper, data, optimization, *args, **kwargs):
        optimised = type(optimization).__name__ != "NullOptimization"
        if optimised:
            (module,) = stepper.modules
            weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        result = original(stepper, data, optimization, *args, **kwargs)
        if optimised:
            losses.append(
                {
                    "loss": float(result.metrics["loss"]),
                    "time": [str(t) for t in data.time.values[:, 0]],
                    "weights_before": weights,
                }
            )
        return result

    single_module.TrainStepper.train_on_batch = recording_train_on_batch
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = _write_fixture(tmp_path / "data_root")
        experiment = tmp_path / "train"
        train_yaml = run_out / "train.yaml"
        _run_released(train_main, _train_config(data, experiment), train_yaml)
        checkpoints = experiment / "training_checkpoints"
        for name in ("ckpt.tar", "best_ckpt.tar", "best_inference_ckpt.tar"):
            shutil.copy(checkpoints / name, run_out / name)
        eval_dir = tmp_path / "eval"
        eval_yaml = run_out / "evaluator.yaml"
        eval_config = _evaluator_config(data, checkpoints / "ckpt.tar", eval_dir)
        _run_released(evaluator_main, eval_config, eval_yaml)
        result = {
            key: _read_fields(eval_dir / file_name)
            for key, file_name in [
                ("prediction", "autoregressive_predictions.nc"),
                ("target", "autoregressive_target.nc"),
            ]
        }
        torch.save(result, run_out / "evaluator_predictions.pt")
    torch.save(losses[-1], run_out / "last_batch_loss.pt")
    _finish_run_dir(run_out, [train_yaml, eval_yaml], tmp_path)


RESTART_STEPS = 3
RESTART_IC_TIMES = [2, 9]


def _inference_config(
    data: Path, checkpoint: Path, initial_condition: Path, out_dir: Path
) -> dict[str, Any]:
    return {
        "experiment_dir": str(out_dir),
        "n_forward_steps": RESTART_STEPS,
        "forward_steps_in_memory": RESTART_STEPS,
        "checkpoint_path": str(checkpoint),
        "logging": {"log_to_screen": True, "log_to_file": False, "log_to_wandb": False},
        "initial_condition": {"path": str(initial_condition)},
        "forcing_loader": {
            "dataset": {"data_path": str(data / "data")},
            "num_data_workers": 0,
        },
    }


def make_restart(out: Path) -> None:
    """Run the released inference, restart it, keep the restart and what followed."""
    import torch
    import xarray as xr
    from fme.ace.inference.inference import main as inference_main

    checkpoint = out / "ace_run" / "ckpt.tar"
    restart_out = _fresh_dir(out / "ace_run" / "restart")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = _write_fixture(tmp_path / "data_root")
        (first_file,) = sorted((data / "data").glob("*.nc"))
        prognostic = ["PRESsfc", "air_temperature_0", "air_temperature_1"]
        prognostic += ["specific_total_water_0", "specific_total_water_1"]
        with xr.open_dataset(first_file) as ds:
            picked = ds.isel(time=RESTART_IC_TIMES)
            ic = xr.Dataset(
                {n: (("sample", "lat", "lon"), picked[n].values) for n in prognostic},
                coords={
                    "time": ("sample", picked["time"].values),
                    "lat": picked["lat"].values,
                    "lon": picked["lon"].values,
                },
            )
        ic_path = tmp_path / "ic.nc"
        ic.to_netcdf(ic_path)
        runs = [("first", ic_path), ("second", tmp_path / "first" / "restart.nc")]
        for name, initial_condition in runs:
            config = _inference_config(
                data, checkpoint, initial_condition, tmp_path / name
            )
            _run_released(inference_main, config, tmp_path / f"{name}.yaml")
        shutil.copy(tmp_path / "first" / "restart.nc", restart_out / "restart.nc")
        result = _read_fields(tmp_path / "second" / "autoregressive_predictions.nc")
    torch.save(result, restart_out / "continuation.pt")
    print(f"wrote {restart_out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--only",
        choices=("networks", "noise", "checkpoint", "restart", "noise_checkpoint"),
        default=None,
    )
    parser.add_argument(
        "--fixture-data",
        type=Path,
        default=None,
        help="the ACE-format fixture, written with this project's venv: "
        f"{FIXTURE_COMMAND} (needed by checkpoint, restart and noise_checkpoint)",
    )
    args = parser.parse_args()
    global FIXTURE_DATA
    FIXTURE_DATA = args.fixture_data
    os.environ.setdefault("WANDB_MODE", "disabled")
    _check_reference_fme()
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "networks"):
        make_networks(args.out)
    if args.only in (None, "noise"):
        make_noise_networks(args.out)
    if args.only in (None, "checkpoint"):
        make_checkpoint(args.out)
    if args.only in (None, "restart"):
        make_restart(args.out)
    if args.only in (None, "noise_checkpoint"):
        make_noise_checkpoint(args.out)


if __name__ == "__main__":
    main()
