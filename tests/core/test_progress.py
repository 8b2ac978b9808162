import io

from fme.core.progress import Progress


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_plain_lines_every_interval_with_step_loss_rate_and_eta():
    out = _Pipe()
    progress = Progress(
        epoch=2, n_epochs=3, n_batches=5, interval=2, enabled=True, stream=out
    )
    for b in range(5):
        progress.update(step=10 + b, loss=0.5 / (b + 1), n_samples=4)
    progress.close()
    lines = out.getvalue().splitlines()
    # batches 2 and 4, and the last one
    assert [line.split(" step ")[0] for line in lines] == [
        "epoch 2/3 batch 2/5",
        "epoch 2/3 batch 4/5",
        "epoch 2/3 batch 5/5",
    ]
    assert "step 11 loss 0.25 " in lines[0]
    assert "samples/s" in lines[0] and "epoch ETA" in lines[0] and "run ETA" in lines[0]


def test_disabled_progress_prints_nothing():
    out = _Pipe()
    progress = Progress(epoch=1, n_epochs=None, n_batches=3, enabled=False, stream=out)
    for b in range(3):
        progress.update(step=b, loss=1.0, n_samples=1)
    assert out.getvalue() == ""
