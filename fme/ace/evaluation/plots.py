"""PNG figures of training curves, rollout skill, drift and fields.

Matplotlib is imported inside the functions, so importing this module stays
cheap and never touches a display. Figures are built with
``matplotlib.figure.Figure`` and rendered by the Agg canvas: no pyplot state,
no global backend switch, nothing left open after saving. Every function
returns the path of the PNG it wrote; log it with ``wandb.Image(str(path))``.
"""

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fme.core.loss_weight_schedule import METRIC_PREFIX as LOSS_WEIGHT_PREFIX

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TRAINING_CURVES_FILENAME = "training_curves.png"
LOSS_WEIGHTS_FILENAME = "loss_weights.png"
_STEP_KEY = "optimizer_step"


def _new_figure(
    n_panels: int, panel_size: tuple[float, float] = (4.0, 3.0)
) -> tuple["Figure", list["Axes"]]:
    """A figure with a grid of ``n_panels`` axes (unused trailing axes hidden)."""
    from matplotlib.figure import Figure

    n_cols = min(n_panels, 4)
    n_rows = math.ceil(n_panels / n_cols)
    fig = Figure(
        figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows),
        layout="constrained",
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False).flatten()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _save(fig: "Figure", out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=100)
    fig.clear()
    return out_path


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    return records


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """``(optimizer steps, values)`` of the records holding a finite ``key``."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if (
            _STEP_KEY in record
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            steps.append(float(record[_STEP_KEY]))
            values.append(float(value))
    return steps, values


def _plot_series(ax: "Axes", records: list[dict], keys: list[str]) -> None:
    all_positive = True
    for key in keys:
        steps, values = _series(records, key)
        if not values:
            continue
        all_positive = all_positive and min(values) > 0
        marker = "o" if len(values) < 30 else None
        ax.plot(steps, values, label=key, marker=marker, markersize=3)
    if all_positive and ax.lines:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def plot_training_curves(metrics_jsonl: Path, out_dir: Path) -> list[Path]:
    """Loss terms and loss weights over optimizer steps from ``metrics.jsonl``.

    Every key containing ``loss`` (other than ``loss_weight/...``) is a loss
    curve in ``training_curves.png``; ``loss_weight/<term>`` keys go to
    ``loss_weights.png``, written only when such keys exist. Records without
    ``optimizer_step`` are skipped.

    Args:
        metrics_jsonl: one JSON object per line.
        out_dir: directory of the PNG files.

    Returns:
        The written paths.
    """
    records = _read_jsonl(Path(metrics_jsonl))
    keys = list(dict.fromkeys(k for record in records for k in record))
    weight_keys = [k for k in keys if k.startswith(LOSS_WEIGHT_PREFIX)]
    loss_keys = [k for k in keys if "loss" in k and k not in weight_keys]
    out_dir = Path(out_dir)
    paths = []
    fig, (ax,) = _new_figure(1, panel_size=(8.0, 5.0))
    _plot_series(ax, records, loss_keys)
    ax.set_ylabel("loss")
    ax.set_title("training curves")
    paths.append(_save(fig, out_dir / TRAINING_CURVES_FILENAME))
    if weight_keys:
        fig, (ax,) = _new_figure(1, panel_size=(8.0, 5.0))
        _plot_series(ax, records, weight_keys)
        ax.set_yscale("linear")
        ax.set_ylabel("loss weight")
        ax.set_title("loss weights")
        paths.append(_save(fig, out_dir / LOSS_WEIGHTS_FILENAME))
    return paths


def _curve_names(curves: dict[str, list[float]], metric: str) -> list[str]:
    prefix = f"{metric}/"
    return [k[len(prefix) :] for k in curves if k.startswith(prefix)]


def _lead_hours(n: int, timestep_hours: float) -> np.ndarray:
    return np.arange(1, n + 1) * timestep_hours


def _plot_per_variable(
    *,
    curves: dict[str, list[float]],
    metric: str,
    reference_metric: str,
    reference_label: str,
    ylabel: str,
    timestep_hours: float,
    out_path: Path,
    zero_line: bool,
) -> Path:
    names = _curve_names(curves, metric)
    if not names:
        raise ValueError(f"curves has no '{metric}/<var>' series; got {list(curves)}")
    fig, axes = _new_figure(len(names))
    for ax, name in zip(axes, names, strict=True):
        values = curves[f"{metric}/{name}"]
        hours = _lead_hours(len(values), timestep_hours)
        ax.plot(hours, values, label="prediction", marker=".")
        reference = curves.get(f"{reference_metric}/{name}")
        if reference is not None:
            ax.plot(hours, reference, label=reference_label, linestyle="--")
        if zero_line:
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("lead time [h]")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)


def plot_rmse_vs_lead(
    curves: dict[str, list[float]], timestep_hours: float, out_path: Path
) -> Path:
    """RMSE against lead time, one panel per variable.

    Args:
        curves: from ``RolloutMetricsAggregator.get_curves()``; uses
            ``rmse/<var>`` and, when present, ``persistence_rmse/<var>``.
            Entry ``i`` is lead ``i + 1``.
        timestep_hours: hours per lead step.
        out_path: the PNG to write.
    """
    return _plot_per_variable(
        curves=curves,
        metric="rmse",
        reference_metric="persistence_rmse",
        reference_label="persistence",
        ylabel="RMSE",
        timestep_hours=timestep_hours,
        out_path=out_path,
        zero_line=False,
    )


def plot_global_mean_drift(
    curves: dict[str, list[float]], timestep_hours: float, out_path: Path
) -> Path:
    """Drift of the global mean from the initial condition against lead time.

    Args:
        curves: from ``RolloutMetricsAggregator.get_curves()``; uses
            ``global_mean_drift/<var>`` and, when present,
            ``target_global_mean_drift/<var>``. Entry ``i`` is lead ``i + 1``.
        timestep_hours: hours per lead step.
        out_path: the PNG to write.
    """
    return _plot_per_variable(
        curves=curves,
        metric="global_mean_drift",
        reference_metric="target_global_mean_drift",
        reference_label="target",
        ylabel="global-mean drift",
        timestep_hours=timestep_hours,
        out_path=out_path,
        zero_line=True,
    )


def plot_field_map(
    prediction: np.ndarray,
    target: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    name: str,
    out_path: Path,
) -> Path:
    """Predicted and target field side by side, plus their difference.

    Prediction and target share one colour scale; the difference uses a
    symmetric diverging scale.

    Args:
        prediction: ``[lat, lon]`` field.
        target: ``[lat, lon]`` field.
        lat: ``[lat]`` latitudes in degrees.
        lon: ``[lon]`` longitudes in degrees.
        name: variable name for the titles.
        out_path: the PNG to write.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    expected = (len(lat), len(lon))
    if prediction.shape != expected or target.shape != expected:
        raise ValueError(
            f"prediction and target must be [lat, lon] = {expected}, got "
            f"{prediction.shape} and {target.shape}"
        )
    both = np.concatenate([prediction.ravel(), target.ravel()])
    vmin, vmax = float(np.nanmin(both)), float(np.nanmax(both))
    difference = prediction - target
    limit = float(np.nanmax(np.abs(difference))) or 1.0
    fig, axes = _new_figure(3, panel_size=(5.0, 3.0))
    panels = (
        (prediction, "prediction", "viridis", vmin, vmax),
        (target, "target", "viridis", vmin, vmax),
        (difference, "prediction - target", "RdBu_r", -limit, limit),
    )
    for ax, (field, title, cmap, low, high) in zip(axes, panels, strict=True):
        mesh = ax.pcolormesh(
            np.asarray(lon), np.asarray(lat), field, cmap=cmap, vmin=low, vmax=high
        )
        fig.colorbar(mesh, ax=ax, shrink=0.8)
        ax.set_title(f"{name}: {title}")
        ax.set_xlabel("longitude [°]")
        ax.set_ylabel("latitude [°]")
    return _save(fig, out_path)


def image_paths_for_wandb(paths: Iterable[Path]) -> dict[str, Path]:
    """``{file stem: path}`` for logging, e.g. ``wandb.Image(str(path))``."""
    return {Path(p).stem: Path(p) for p in paths}
