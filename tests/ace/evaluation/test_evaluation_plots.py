import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fme.ace.evaluation.plots import (
    image_paths_for_wandb,
    plot_field_map,
    plot_global_mean_drift,
    plot_rmse_vs_lead,
    plot_training_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_importing_plots_does_not_import_matplotlib():
    code = (
        "import sys, fme.ace.evaluation.plots; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_training_curves_and_loss_weights(tmp_path):
    records: list[dict] = []
    for step in range(1, 21):
        records.append(
            {
                "optimizer_step": step,
                "epoch": step // 10,
                "batch_loss": 1.0 / step,
                "loss_weight/corrector": min(1.0, step / 10),
            }
        )
        if step % 10 == 0:
            records.append(
                {
                    "optimizer_step": step,
                    "epoch": step // 10,
                    "train/mean/loss": 1.0 / step,
                    "val/mean/loss": 1.2 / step,
                }
            )
    records.append({"note": "no step, skipped", "batch_loss": float("nan")})
    jsonl = write_jsonl(tmp_path / "metrics.jsonl", records)
    paths = plot_training_curves(jsonl, tmp_path / "plots")
    assert [p.name for p in paths] == ["training_curves.png", "loss_weights.png"]
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert_png(path)
    assert image_paths_for_wandb(paths) == {
        "training_curves": paths[0],
        "loss_weights": paths[1],
    }


def test_training_curves_without_loss_weights(tmp_path):
    records = [{"optimizer_step": s, "batch_loss": 2.0 - 0.1 * s} for s in range(5)]
    jsonl = write_jsonl(tmp_path / "metrics.jsonl", records)
    paths = plot_training_curves(jsonl, tmp_path)
    assert [p.name for p in paths] == ["training_curves.png"]
    assert_png(paths[0])


def test_rmse_and_drift_vs_lead(tmp_path):
    curves = {
        "rmse/a": [0.1, 0.2, 0.4],
        "persistence_rmse/a": [0.3, 0.5, 0.6],
        "rmse/b": [1.0, float("nan"), 2.0],
        "global_mean_drift/a": [0.0, -0.01, 0.02],
        "target_global_mean_drift/a": [0.0, 0.0, 0.01],
    }
    rmse_path = plot_rmse_vs_lead(
        curves,
        6.0,
        tmp_path / "r.png",  # positional, as the evaluate CLI calls it
    )
    drift_path = plot_global_mean_drift(
        curves, timestep_hours=6.0, out_path=tmp_path / "sub" / "d.png"
    )
    assert rmse_path == tmp_path / "r.png"
    assert drift_path == tmp_path / "sub" / "d.png"
    assert_png(rmse_path)
    assert_png(drift_path)
    with pytest.raises(ValueError, match="global_mean_drift"):
        plot_global_mean_drift(
            {"rmse/a": [1.0]}, timestep_hours=6.0, out_path=tmp_path / "x.png"
        )


def test_field_map(tmp_path):
    lat = np.linspace(-80, 80, 8)
    lon = np.arange(16) * 22.5
    target = np.cos(np.deg2rad(lat))[:, None] * np.ones(16)
    prediction = target + 0.1 * np.sin(np.deg2rad(lon))[None, :]
    path = plot_field_map(
        prediction=prediction,
        target=target,
        lat=lat,
        lon=lon,
        name="a",
        out_path=tmp_path / "map.png",
    )
    assert_png(path)
    with pytest.raises(ValueError, match="lat, lon"):
        plot_field_map(prediction.T, target, lat, lon, "a", tmp_path / "bad.png")


def test_training_curves_are_grouped_by_family():
    from fme.ace.evaluation.plots import curve_families

    keys = [
        "optimizer_step",
        "train/mean/loss",
        "val/mean/main_loss",
        "train/mean/loss/PRESsfc",
        "loss_step_0",
        "corrector_regularization",
        "correction_rms/PRESsfc",
        "lr",
        "loss_weight/main",
    ]
    assert curve_families(keys) == {
        "loss": ["train/mean/loss", "val/mean/main_loss"],
        "per-variable loss": ["train/mean/loss/PRESsfc"],
        "loss per rollout step": ["loss_step_0"],
        "corrector": ["corrector_regularization", "correction_rms/PRESsfc"],
        "learning rate": ["lr"],
    }


def test_field_map_with_units_and_time(tmp_path):
    lat = np.linspace(-80, 80, 8)
    lon = np.arange(16) * 22.5
    field = np.cos(np.deg2rad(lat))[:, None] * np.ones(16)
    path = plot_field_map(
        field,
        field + 1.0,
        lat,
        lon,
        "PRESsfc",
        tmp_path / "map.png",
        units="Pa",
        long_name="surface pressure",
        when="lead 24 h, valid 2000-01-02 00:00",
    )
    assert_png(path)


def test_a_panel_of_many_series_has_a_count_instead_of_a_legend(tmp_path):
    from matplotlib.figure import Figure

    from fme.ace.evaluation.plots import MAX_LEGEND_ENTRIES, _plot_series

    n_many = 160  # every per-variable loss of an ACE2 config
    records = [
        {"optimizer_step": s, **{f"val/mean/loss/v{i}": s + i for i in range(n_many)}}
        for s in range(3)
    ]
    few = [f"val/mean/loss/v{i}" for i in range(3)]
    many = [f"val/mean/loss/v{i}" for i in range(n_many)]
    ax_few, ax_many = Figure().subplots(1, 2)
    _plot_series(ax_few, records, few)
    _plot_series(ax_many, records, many)
    assert [t.get_text() for t in ax_few.get_legend().get_texts()] == few
    assert ax_many.get_legend() is None and len(ax_many.lines) == n_many
    assert [t.get_text() for t in ax_many.texts] == [
        f"{n_many} series (names in metrics.jsonl)"
    ]
    assert n_many > MAX_LEGEND_ENTRIES >= len(few)
    jsonl = write_jsonl(tmp_path / "metrics.jsonl", records)
    assert_png(plot_training_curves(jsonl, tmp_path / "plots")[0])
