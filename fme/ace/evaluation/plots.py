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
MAX_LEGEND_ENTRIES = 12
"""Panels with more series than this get a count instead of a legend."""


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
    if len(ax.lines) > MAX_LEGEND_ENTRIES:
        # a legend of hundreds of names (every variable of an ACE run) hides
        # the panel and takes seconds to lay out; the names are in the jsonl
        ax.text(
            0.02,
            0.98,
            f"{len(ax.lines)} series (names in metrics.jsonl)",
            transform=ax.transAxes,
            va="top",
            fontsize="small",
        )
    elif ax.lines:
        ax.legend(fontsize="small")


def curve_families(keys: list[str]) -> dict[str, list[str]]:
    """Training-curve keys grouped into panels, by family.

    ``loss`` (totals), ``per-variable loss`` (``.../loss/<var>``), ``loss per
    rollout step`` (``..._step_<i>``), ``corrector`` (regularisation and
    correction RMS) and ``learning rate``; ``loss_weight/...`` keys are left
    to their own figure. Families without keys are omitted.
    """
    families: dict[str, list[str]] = {
        "loss": [],
        "per-variable loss": [],
        "loss per rollout step": [],
        "corrector": [],
        "learning rate": [],
    }
    for key in keys:
        if key.startswith(LOSS_WEIGHT_PREFIX) or key == _STEP_KEY:
            continue
        leaf = key.rsplit("/", 1)[-1]
        if key == "lr" or key.endswith("/lr"):
            families["learning rate"].append(key)
        elif "corrector" in key or "correction" in key:
            families["corrector"].append(key)
        elif "_step_" in leaf:
            families["loss per rollout step"].append(key)
        elif "loss/" in key:
            families["per-variable loss"].append(key)
        elif "loss" in key:
            families["loss"].append(key)
    return {name: found for name, found in families.items() if found}


def _varies(records: list[dict], key: str) -> bool:
    """Whether a series has at least one value and is not a constant."""
    _, values = _series(records, key)
    return len(values) == 1 or (len(values) > 1 and max(values) > min(values))


def plot_training_curves(metrics_jsonl: Path, out_dir: Path) -> list[Path]:
    """Training curves over optimizer steps from ``metrics.jsonl``, one panel per family.

    ``training_curves.png`` has a panel per family of :func:`curve_families`
    (constant series are left out: a flat line says nothing);
    ``loss_weight/<term>`` keys go to ``loss_weights.png``, written only when
    such keys exist. Records without ``optimizer_step`` are skipped.

    Args:
        metrics_jsonl: one JSON object per line.
        out_dir: directory of the PNG files.

    Returns:
        The written paths.
    """
    records = _read_jsonl(Path(metrics_jsonl))
    keys = list(dict.fromkeys(k for record in records for k in record))
    weight_keys = [k for k in keys if k.startswith(LOSS_WEIGHT_PREFIX)]
    families = {
        name: [k for k in found if _varies(records, k)]
        for name, found in curve_families(keys).items()
    }
    families = {name: found for name, found in families.items() if found}
    if not families:
        families = {"loss": []}
    out_dir = Path(out_dir)
    paths = []
    fig, axes = _new_figure(len(families), panel_size=(5.0, 3.5))
    for ax, (family, family_keys) in zip(axes, families.items(), strict=True):
        _plot_series(ax, records, family_keys)
        ax.set_title(family)
        ax.set_ylabel("learning rate" if family == "learning rate" else family)
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
    units: dict[str, str] | None = None,
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
        unit = (units or {}).get(name)
        ax.set_ylabel(f"{ylabel} [{unit}]" if unit else ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)


def plot_rmse_vs_lead(
    curves: dict[str, list[float]],
    timestep_hours: float,
    out_path: Path,
    *,
    units: dict[str, str] | None = None,
) -> Path:
    """RMSE against lead time, one panel per variable.

    Args:
        curves: from ``RolloutMetricsAggregator.get_curves()``; uses
            ``rmse/<var>`` and, when present, ``persistence_rmse/<var>``.
            Entry ``i`` is lead ``i + 1``.
        timestep_hours: hours per lead step.
        out_path: the PNG to write.
        units: ``{var: units}`` for the axis labels.
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
        units=units,
    )


def plot_global_mean_drift(
    curves: dict[str, list[float]],
    timestep_hours: float,
    out_path: Path,
    *,
    units: dict[str, str] | None = None,
) -> Path:
    """Drift of the global mean from the initial condition against lead time.

    Args:
        curves: from ``RolloutMetricsAggregator.get_curves()``; uses
            ``global_mean_drift/<var>`` and, when present,
            ``target_global_mean_drift/<var>``. Entry ``i`` is lead ``i + 1``.
        timestep_hours: hours per lead step.
        out_path: the PNG to write.
        units: ``{var: units}`` for the axis labels.
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
        units=units,
    )


def plot_field_map(
    prediction: np.ndarray,
    target: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    name: str,
    out_path: Path,
    *,
    units: str | None = None,
    long_name: str | None = None,
    when: str | None = None,
) -> Path:
    """Predicted and target field side by side, plus their difference.

    Prediction and target share one colour scale; the difference uses a
    symmetric diverging scale. Colour bars are labelled with the units.

    Args:
        prediction: ``[lat, lon]`` field.
        target: ``[lat, lon]`` field.
        lat: ``[lat]`` latitudes in degrees.
        lon: ``[lon]`` longitudes in degrees.
        name: variable name for the titles.
        out_path: the PNG to write.
        units: the variable's units (from the data's attributes).
        long_name: a longer description for the figure title.
        when: lead time and valid date for the figure title, e.g.
            ``"lead 5 d, valid 2000-01-06 00:00"``.
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
    label = f"{name} [{units}]" if units else name
    panels = (
        (prediction, "prediction", "viridis", vmin, vmax, label),
        (target, "target", "viridis", vmin, vmax, label),
        (difference, "prediction - target", "RdBu_r", -limit, limit, f"Δ {label}"),
    )
    for ax, (field, title, cmap, low, high, bar) in zip(axes, panels, strict=True):
        mesh = ax.pcolormesh(
            np.asarray(lon), np.asarray(lat), field, cmap=cmap, vmin=low, vmax=high
        )
        fig.colorbar(mesh, ax=ax, shrink=0.8, label=bar)
        ax.set_title(f"{name}: {title}")
        ax.set_xlabel("longitude [°]")
        ax.set_ylabel("latitude [°]")
    heading = long_name or name
    fig.suptitle(f"{heading}, {when}" if when else heading)
    return _save(fig, out_path)


def image_paths_for_wandb(paths: Iterable[Path]) -> dict[str, Path]:
    """``{file stem: path}`` for logging, e.g. ``wandb.Image(str(path))``."""
    return {Path(p).stem: Path(p) for p in paths}
