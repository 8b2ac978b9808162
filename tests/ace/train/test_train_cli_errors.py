"""Bad configs fail before any data is read, naming the key path and the fix."""

import re

import pytest
import yaml
from train_run_builders import DEFAULT_CONFIG

from fme.ace.train.main import main


def _write(tmp_path, mutate):
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    # data paths that do not exist: an error about them would mean data was read
    data["train_loader"]["dataset"]["data_path"] = str(tmp_path / "missing")
    mutate(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["optimization"].update(learning_rate=1.0),
            r"config.optimization: unknown key\(s\) learning_rate; allowed keys",
        ),
        (
            lambda d: d.update(max_epochs="three"),
            r"config.max_epochs: expected type int, got 'three'",
        ),
        (
            lambda d: d["optimization"].update(optimizer_type="Adamm"),
            r"optimizer_type 'Adamm' is unknown; allowed: \['Adam', 'AdamW', ",
        ),
        (
            lambda d: d["stepper"]["step"]["config"]["builder"].update(type="SFNO"),
            r"unknown module type 'SFNO'; allowed: .*SphericalFourierNeuralOperatorNet",
        ),
        (
            lambda d: d["stepper_training"].update(
                loss_weight_schedules={"mian": {"type": "constant", "value": 1.0}}
            ),
            r"mian.*main",
        ),
        (
            lambda d: d["optimization"].update(max_grad_norm=float("nan")),
            r"config.optimization.max_grad_norm: must be a finite number, got nan",
        ),
        (
            lambda d: d["optimization"].update(lr=float("inf")),
            r"config.optimization.lr: must be a finite number, got inf",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, capsys, mutate, message):
    with pytest.raises(SystemExit) as exit_info:
        main([str(_write(tmp_path, mutate))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "missing").exists()


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("experiment_dir: x\noptimization: {lr: 1.0\nmax_epochs: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.match(rf"config error: {re.escape(str(path))}:3:\d+: YAML syntax", err)
