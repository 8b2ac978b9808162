"""A default training run never imports torch._dynamo (seconds of start-up).

The run trains, checkpoints, and resumes from the checkpoint in a fresh
process, so that every import the run makes is seen; ``compile: true`` may
import torch._dynamo and is not run here.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from fme.core.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    from train_run_builders import tiny_config, tiny_data

    from fme.ace.train.main import run_training

    root = Path(sys.argv[1])
    data = tiny_data(root)
    run_training(tiny_config(data, root / "run", ["max_steps=2"]))
    first_run = "torch._dynamo" in sys.modules
    run_training(tiny_config(data, root / "run", ["max_steps=4"]))  # resumes
    print(json.dumps({"first_run": first_run, "end": "torch._dynamo" in sys.modules}))
    """
)


def test_training_and_resuming_never_import_torch_dynamo(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        cwd=HERE,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)]),
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported == {"first_run": False, "end": False}
    state = load_checkpoint(tmp_path / "run" / "training_checkpoints" / "ckpt.tar")
    assert state["optimization"]["optimizer_steps"] == 4
    # the resumed run continued the saved Adam state (fused format)
    step = state["optimization"]["optimizer"]["state"][0]["step"]
    assert step.dtype == torch.float32 and float(step) == 4.0
