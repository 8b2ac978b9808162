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


class _Pickled:
    """A class a foreign pickle might hold (never loaded: weights-only)."""


@pytest.mark.parametrize(
    "content, found",
    [
        (lambda p: torch.save({"weights": torch.zeros(2), "step": 3}, p), "step"),
        (lambda p: torch.save(torch.zeros(2), p), "Tensor"),
        (lambda p: p.write_text("not a checkpoint at all"), "weights-only"),
        (lambda p: torch.save({"obj": _Pickled()}, p), "weights-only"),
    ],
)
def test_neither_ours_nor_foreign_is_one_error_naming_file_and_content(
    tmp_path, content, found
):
    path = tmp_path / "mystery.tar"
    content(path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "mystery.tar" in message and "neither an fme checkpoint" in message
    assert found in message
