"""Training progress on screen: a tqdm bar on a terminal, plain lines elsewhere.

When stdout is not a terminal (a SLURM log, ``| tee``), a bar would write
carriage returns into the file; instead one line is printed every
``interval`` batches with the step, the loss, samples/s and the ETA of the
epoch and of the run.
"""

import sys
import time
from typing import Any


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
    """Reports the batches of one epoch.

    Args:
        epoch: the epoch (1-based) being trained.
        n_epochs: epochs of the run, or None when unknown.
        n_batches: batches in the epoch.
        done: batches already done (a resumed epoch).
        interval: batches between plain lines.
        enabled: false on non-root ranks or without screen logging.
        stream: where lines go (stdout by default).
    """

    def __init__(
        self,
        *,
        epoch: int,
        n_epochs: int | None,
        n_batches: int,
        done: int = 0,
        interval: int = 50,
        enabled: bool = True,
        stream: Any = None,
    ):
        self._stream = stream or sys.stdout
        self._epoch, self._n_epochs = epoch, n_epochs
        self._n_batches, self._done, self._interval = n_batches, done, interval
        self._start_done = done
        self._start = time.perf_counter()
        self._samples = 0
        self._bar = None
        self._enabled = enabled
        if enabled and self._stream.isatty():
            from tqdm import tqdm

            of_total = f"/{n_epochs}" if n_epochs is not None else ""
            self._bar = tqdm(
                total=n_batches,
                initial=done,
                desc=f"epoch {epoch}{of_total}",
                leave=False,
            )

    def update(self, *, step: int, loss: float | None, n_samples: int) -> None:
        """One batch done, at optimiser ``step`` with this batch's ``loss``."""
        self._done += 1
        self._samples += n_samples
        if not self._enabled:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = self._samples / elapsed
        per_batch = elapsed / max(self._done - self._start_done, 1)
        epoch_left = per_batch * (self._n_batches - self._done)
        if self._bar is not None:
            self._bar.update(1)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4g}", samples_s=f"{rate:.1f}")
            return
        if self._done % self._interval != 0 and self._done != self._n_batches:
            return
        of_total = f"/{self._n_epochs}" if self._n_epochs is not None else ""
        run = ""
        if self._n_epochs is not None:
            epochs_left = self._n_epochs - self._epoch
            run_left = epoch_left + epochs_left * per_batch * self._n_batches
            run = f", run ETA {_duration(run_left)}"
        loss_text = "n/a" if loss is None else f"{loss:.4g}"
        print(
            f"epoch {self._epoch}{of_total} batch {self._done}/{self._n_batches} "
            f"step {step} loss {loss_text} {rate:.1f} samples/s "
            f"epoch ETA {_duration(epoch_left)}{run}",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        """Finish the bar (no-op for plain lines)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
