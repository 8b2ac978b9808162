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


def _good_checkpoint_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.tar"
    save_checkpoint({"w": torch.arange(1000.0), "epoch": 2}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "corrupt, what",
    [
        (lambda b: b"", "empty"),
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:100], "truncated or corrupt"),
        (lambda b: b"not a checkpoint at all" * 10, "truncated or corrupt"),
    ],
)
def test_corrupt_checkpoint_error_names_the_path_and_what_is_wrong(
    tmp_path, corrupt, what
):
    path = tmp_path / "ckpt.tar"
    path.write_bytes(corrupt(_good_checkpoint_bytes(tmp_path)))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert what in message


def test_a_checkpoint_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "ckpt.tar"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=f"{path}.*not a checkpoint"):
        load_checkpoint(path)


def test_remove_stale_temporary_files_keeps_checkpoints(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "ckpt.tar")
    # what a write killed between mkstemp and rename leaves behind
    stale = [tmp_path / ".ckpt.tar.abc123.tmp", tmp_path / ".best_ckpt.tar.x.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    (tmp_path / "notes.tmp").write_text("a user's file")
    removed = checkpoint.remove_stale_temporary_files(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.tar", "notes.tmp"]
    assert checkpoint.remove_stale_temporary_files(tmp_path / "missing") == []
