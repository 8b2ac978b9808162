"""The released-fme YAML that scripts/reference_ace_benchmark.py writes.

The script itself runs with a separate virtualenv holding ``fme==2026.10.0``;
these tests only check the config it builds (no released fme needed).
"""

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from fme.ace.data.ace_format_fixture import write_ace_format_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reference_ace_benchmark.py"


def _load_script() -> types.ModuleType:
    # run as a script, it has its own directory first on sys.path
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("reference_ace_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(module: types.ModuleType, data: Path, out: Path) -> argparse.Namespace:
    return module._parse_args(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "7",
            "--warmup",
            "2",
            "--batch-size",
            "3",
            "--n-forward-steps",
            "2",
        ]
    )


def test_config_matches_fixture_roles_and_settings(tmp_path: Path) -> None:
    module = _load_script()
    paths = write_ace_format_dataset(tmp_path / "ace", n_lat=4, n_lon=8, n_times=6)
    args = _args(module, tmp_path / "ace", tmp_path / "out")
    data_dir, stats_dir = module._resolve_layout(args.data, args.stats_dir)
    assert data_dir == paths.data_dir.resolve()
    assert stats_dir == paths.means_path.parent.resolve()
    staged = module._stage_data(data_dir, tmp_path / "out")
    assert sorted(p.name for p in staged.iterdir()) == ["data_000.nc"]

    config = module.build_train_config(
        args,
        data_dir=data_dir,
        stats_dir=stats_dir,
        staged_data=staged,
        experiment_dir=tmp_path / "exp",
    )
    step = config["stepper"]["step"]["config"]
    assert step["in_names"] == paths.prognostic + paths.forcing
    assert step["out_names"] == paths.prognostic + paths.diagnostic
    assert step["corrector"] == {
        "type": "atmosphere_corrector",
        "config": {"conserve_dry_air": True},
    }
    builder = step["builder"]
    assert builder["type"] == "SphericalFourierNeuralOperatorNet"
    assert builder["config"]["embed_dim"] == 16
    assert builder["config"]["num_layers"] == 2
    norm = step["normalization"]
    assert norm["network"]["global_stds_path"] == str(paths.stds_path.resolve())
    assert norm["residual"]["global_stds_path"] == str(
        paths.residual_stds_path.resolve()
    )
    # warmup + steps timed, plus the step whose start ends the timing.
    assert config["train_loader"]["sample_with_replacement"] == (2 + 7 + 1) * 3
    assert config["stepper_training"] == {
        "loss": {"type": "MSE"},
        "n_forward_steps": 2,
    }
    assert config["optimization"]["lr"] == pytest.approx(1.0e-4)
    assert config["logging"]["log_to_wandb"] is False


def test_flat_directory_layout_excludes_stats_files(tmp_path: Path) -> None:
    module = _load_script()
    write_ace_format_dataset(tmp_path / "ace", n_lat=4, n_lon=8, n_times=4)
    flat = tmp_path / "flat"
    flat.mkdir()
    for sub in ("data", "stats"):
        for path in (tmp_path / "ace" / sub).iterdir():
            (flat / path.name).symlink_to(path)
    data_dir, stats_dir = module._resolve_layout(flat, None)
    assert data_dir == stats_dir == flat.resolve()
    assert [p.name for p in module._data_files(data_dir)] == ["data_000.nc"]


def test_rejects_non_positive_steps(tmp_path: Path) -> None:
    module = _load_script()
    with pytest.raises(SystemExit):
        module._parse_args(["--data", "d", "--out", "o", "--steps", "0"])


def test_roles_come_from_the_flags_without_a_roles_file(tmp_path: Path) -> None:
    module = _load_script()
    paths = write_ace_format_dataset(tmp_path / "ace", n_lat=4, n_lon=8, n_times=4)
    paths.roles_path.unlink()
    args = _args(module, tmp_path / "ace", tmp_path / "out")
    data_dir, stats_dir = module._resolve_layout(args.data, args.stats_dir)
    staged = module._stage_data(data_dir, tmp_path / "out")
    kwargs = dict(
        data_dir=data_dir,
        stats_dir=stats_dir,
        staged_data=staged,
        experiment_dir=tmp_path / "exp",
    )
    with pytest.raises(ValueError, match="--forcing-names and --diagnostic-names"):
        module.build_train_config(args, **kwargs)
    args.forcing_names = ["DSWRFtoa", "HGTsfc"]
    args.diagnostic_names = ["PRATEsfc"]
    step = module.build_train_config(args, **kwargs)["stepper"]["step"]["config"]
    others = ["land_fraction", "ocean_fraction", "sea_ice_fraction"]
    prognostic = sorted(paths.prognostic + paths.diagnostic + others)
    prognostic.remove("PRATEsfc")
    assert step["in_names"] == prognostic + ["DSWRFtoa", "HGTsfc"]
    assert step["out_names"] == prognostic + ["PRATEsfc"]
