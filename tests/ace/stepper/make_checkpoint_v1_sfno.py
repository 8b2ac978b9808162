"""Write the frozen format-1 SFNO checkpoints used by ``test_checkpoint_v1_sfno.py``.

Format 1 is the layout before SFNO weights took ACE's names and shapes (see
``fme.core.checkpoint._migrate_1_to_2``). The files were written once with
the format-1 code of this repository (the commit before format 2), from the
repository root of a checkout of that commit:

    PYTHONPATH=tests/ace/stepper python tests/ace/stepper/make_checkpoint_v1_sfno.py OUT

Each ``checkpoint_v1_sfno_<case>.tar`` is a trainer-style checkpoint; the
matching ``..._expected.pt`` holds an input and the prediction the stepper
made for it when it was written.
"""

import sys
from pathlib import Path

import torch
from stepper_builders import MEANS, STDS, dataset_info

from fme.ace.stepper.stepper import StepperConfig
from fme.core.checkpoint import save_checkpoint
from fme.core.config_loading import from_dict_strict

CASES = {
    # the old defaults: dhconv on an equiangular grid, blocks on the data grid
    "equiangular_diagonal": {
        "embed_dim": 4,
        "num_layers": 2,
        "operator_type": "diagonal",
    },
    "legendre_gauss_scale_factor_2": {
        "embed_dim": 4,
        "num_layers": 2,
        "scale_factor": 2,
        "grid": "legendre-gauss",
    },
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (case, builder) in enumerate(CASES.items()):
        config = from_dict_strict(
            StepperConfig,
            {
                "step": {
                    "type": "single_module",
                    "config": {
                        "builder": {
                            "type": "SphericalFourierNeuralOperatorNet",
                            "config": builder,
                        },
                        "in_names": ["a", "b", "f"],
                        "out_names": ["a", "b"],
                        "normalization": {"network": {"means": MEANS, "stds": STDS}},
                    },
                }
            },
        )
        torch.manual_seed(20 + i)
        stepper = config.build(dataset_info=dataset_info())
        with torch.no_grad():
            for param in stepper.base_module.parameters():
                param.add_(0.1 * torch.randn_like(param))
        optimizer = torch.optim.Adam(stepper.base_module.parameters())
        save_checkpoint(
            {
                "config": {},
                "trainable": {
                    "stepper": stepper.get_state(),
                    "loss_weights": {"t": 0, "terms": {}},
                },
                "optimization": {"optimizer": optimizer.state_dict(), "t": 0},
                "trainer": {"epoch": 1, "best_value": 1.0},
            },
            out / f"checkpoint_v1_sfno_{case}.tar",
        )
        generator = torch.Generator().manual_seed(0)
        inputs = {n: torch.randn(2, 4, 8, generator=generator) for n in ["a", "b", "f"]}
        with torch.no_grad():
            output = stepper.step.step(inputs, {}, detach_uncorrected=True)
        torch.save(
            {"input": inputs, "output": output.output},
            out / f"checkpoint_v1_sfno_{case}_expected.pt",
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
