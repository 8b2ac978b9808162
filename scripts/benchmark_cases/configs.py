"""Training configs of the benchmark cases."""

import json
from pathlib import Path
from typing import Any

from ace_stats_normalization import ace_normalization

from benchmark_cases.common import REPO


def ace_format_config(
    data,
    experiment_dir: Path,
    batch_size: int,
    *,
    cache_in_memory: bool = True,
    embed_dim: int = 16,
    operator_type: str = "diagonal",
    builder: str = "SphericalFourierNeuralOperatorNet",
) -> dict[str, Any]:
    prognostic = data.prognostic
    builder_config: dict[str, Any] = {
        "embed_dim": embed_dim,
        "num_layers": 2,
        "data_grid": "legendre-gauss",
    }
    training: dict[str, Any] = {"loss": {"type": "MSE"}, "n_forward_steps": 2}
    if builder == "NoiseConditionedSFNO":  # as reference_ace_benchmark.py
        builder_config["noise_embed_dim"] = max(1, embed_dim // 2)
        training["n_ensemble"] = 2
        training["loss"] = {
            "type": "EnsembleLoss",
            "kwargs": {"crps_weight": 0.9, "energy_score_weight": 0.1},
        }
    else:
        builder_config["operator_type"] = operator_type
    return {
        "experiment_dir": str(experiment_dir),
        "max_epochs": 100,
        "save_checkpoint": False,
        "logging": {"log_to_screen": False, "log_to_file": False},
        "train_loader": {
            "dataset": {
                "data_path": str(data.data_dir),
                "cache_in_memory": cache_in_memory,
            },
            "batch_size": batch_size,
        },
        "optimization": {"optimizer_type": "Adam", "lr": 1.0e-4},
        "stepper": {
            "step": {
                "type": "single_module",
                "config": {
                    "builder": {"type": builder, "config": builder_config},
                    "in_names": prognostic + data.forcing,
                    "out_names": prognostic + data.diagnostic,
                    "normalization": ace_normalization(data.means_path.parent),
                    "corrector": {
                        "type": "atmosphere_corrector",
                        "config": {"conserve_dry_air": True},
                    },
                },
            }
        },
        "stepper_training": training,
    }


def shallow_water_config(
    data: Path, experiment_dir: Path, corrector_loss: dict[str, Any] | None
) -> dict[str, Any]:
    from fme.ace.train.config import load_train_config
    from fme.core.config_loading import to_dict

    stats = data / "stats"
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={experiment_dir}",
        f"train_loader.dataset.data_path={data / 'train'}",
        f"{step}.normalization.network.global_means_path={stats / 'centering.nc'}",
        f"{step}.normalization.network.global_stds_path={stats / 'scaling-full-field.nc'}",
        f"{step}.normalization.residual.global_means_path={stats / 'centering.nc'}",
        f"{step}.normalization.residual.global_stds_path={stats / 'scaling-residual.nc'}",
        "logging.log_to_screen=false",
        "logging.log_to_file=false",
        "save_checkpoint=false",
        "validation=null",
        "max_epochs=100",
        "train_loader.batch_size=4",
    ]
    if corrector_loss is not None:
        overrides.append(
            f"stepper_training.corrector_loss={json.dumps(corrector_loss)}"
        )
    config = load_train_config(REPO / "configs" / "shallow_water.yaml", overrides)
    return to_dict(config)
