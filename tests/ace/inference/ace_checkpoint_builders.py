"""An untrained ACE-format checkpoint and data for inference and evaluator tests."""

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from fme.ace.data.ace_format_fixture import AceFormatPaths, write_ace_format_dataset
from fme.ace.data.netcdf_dataset import XarrayDataConfig, XarrayDataset
from fme.ace.train.config import load_train_config
from fme.core.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[3]


def ace_data(root: Path, *, n_times: int = 40, n_files: int = 1) -> AceFormatPaths:
    """Tiny ACE-layout data (8 x 16 grid, 8 levels as in the config, 6-hourly from 2000)."""
    return write_ace_format_dataset(
        root, n_lat=8, n_lon=16, n_levels=8, n_times=n_times, n_files=n_files
    )


def ace_checkpoint(
    paths: AceFormatPaths, path: Path, seed: int = 0, weight_scale: float = 1.0
) -> Path:
    """An untrained stepper of ``configs/ace_atmosphere.yaml`` saved as a checkpoint.

    ``weight_scale`` < 1 shrinks every weight, so the residual steps are small
    and long rollouts stay finite.
    """
    step = "stepper.step.config"
    overrides = [
        f"experiment_dir={path.parent}",
        f"train_loader.dataset.data_path={paths.data_dir}",
        f"validation.loader.dataset.data_path={paths.data_dir}",
        f"{step}.normalization.network.global_means_path={paths.means_path}",
        f"{step}.normalization.network.global_stds_path={paths.stds_path}",
        f"{step}.normalization.residual.global_means_path={paths.means_path}",
        f"{step}.normalization.residual.global_stds_path={paths.residual_stds_path}",
        f"{step}.builder.config.embed_dim=8",
    ]
    config = load_train_config(REPO / "configs" / "ace_atmosphere.yaml", overrides)
    info = XarrayDataset(
        XarrayDataConfig(data_path=str(paths.data_dir)),
        names=["PRESsfc"],
        n_timesteps=1,
    ).dataset_info
    torch.manual_seed(seed)
    stepper = config.stepper.build(dataset_info=info)
    with torch.no_grad():
        for parameter in stepper.module.parameters():
            parameter.mul_(weight_scale)
    save_checkpoint({"trainable": {"stepper": stepper.get_state()}}, path)
    return path


def data_times(paths: AceFormatPaths) -> xr.Dataset:
    """Every file of the data joined along time."""
    files = [xr.load_dataset(p) for p in sorted(paths.data_dir.glob("*.nc"))]
    keep = [[v for v in f.data_vars if "time" in f[v].dims] for f in files]
    return xr.concat([f[k] for f, k in zip(files, keep, strict=True)], "time")


def write_initial_conditions(
    paths: AceFormatPaths, out: Path, time_indices: list[int]
) -> Path:
    """The prognostic variables at ``time_indices`` as ``(sample, lat, lon)``."""
    data = data_times(paths).isel(time=time_indices)
    ds = xr.Dataset(
        {n: (("sample", "lat", "lon"), data[n].values) for n in paths.prognostic},
        coords={
            "time": ("sample", data["time"].values),
            "lat": data["lat"].values,
            "lon": data["lon"].values,
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out)
    return out


def as_tensors(ds: xr.Dataset, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(np.asarray(ds[n].values)) for n in names}
