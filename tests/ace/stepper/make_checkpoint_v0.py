"""Write the frozen format-0 checkpoint used by ``test_checkpoint_v0.py``.

Run once from the repository root (already done; the outputs are committed):

    python tests/ace/stepper/make_checkpoint_v0.py

Format 0 is described in ``fme.core.checkpoint._migrate_0_to_1``: no
``format_version``, the stepper at the top level with DDP-prefixed weights and
no loss normaliser, and ``epoch`` / ``best_validation_loss`` / ``optimizer``
at the top level. ``checkpoint_v0_expected.pt`` holds an input and the
prediction the checkpointed stepper made for it when it was written.
"""

from pathlib import Path

import torch
from stepper_builders import build_stepper

OUT = Path(__file__).resolve().parent / "data"


def main() -> None:
    stepper = build_stepper(seed=11)
    state = stepper.get_state()
    stepper_v0 = {
        "config": state["config"],
        "module": {f"module.{k}": v for k, v in state["module"].items()},
        "normalizer": state["normalizer"],
        "dataset_info": state["dataset_info"],
    }
    optimizer = torch.optim.SGD(stepper.base_module.parameters(), lr=0.1)
    checkpoint = {
        "stepper": stepper_v0,
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "best_validation_loss": 0.5,
    }
    generator = torch.Generator().manual_seed(0)
    inputs = {n: torch.randn(2, 4, 8, generator=generator) for n in ["a", "b", "f"]}
    next_forcing = {"f": torch.randn(2, 4, 8, generator=generator)}
    with torch.no_grad():
        output = stepper.step.step(inputs, next_forcing, detach_uncorrected=True)
    OUT.mkdir(exist_ok=True)
    torch.save(checkpoint, OUT / "checkpoint_v0.tar")
    torch.save(
        {"input": inputs, "next_forcing": next_forcing, "output": output.output},
        OUT / "checkpoint_v0_expected.pt",
    )


if __name__ == "__main__":
    main()
