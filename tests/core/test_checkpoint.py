import pytest
import torch

from fme.core import checkpoint
from fme.core.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_and_version(tmp_path):
    path = tmp_path / "ckpt.tar"
    save_checkpoint({"w": torch.arange(3.0), "epoch": 2}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 2
    assert state["format_version"] == checkpoint.CHECKPOINT_FORMAT_VERSION
    torch.testing.assert_close(state["w"], torch.arange(3.0))


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.tar"
    save_checkpoint({"epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.tar"]


def test_newer_format_rejected(tmp_path):
    path = tmp_path / "ckpt.tar"
    torch.save({"format_version": 999}, path)
    with pytest.raises(ValueError, match="upgrade fme"):
        load_checkpoint(path)
