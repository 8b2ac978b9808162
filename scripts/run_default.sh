#!/usr/bin/env bash
# The main job on the embedded default data: install, generate the
# shallow-water dataset (if missing), train an emulator with a corrector, and
# evaluate it. Re-running resumes training from the latest checkpoint.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export PATH="$root/.venv/bin:$PATH"
export WANDB_MODE="${WANDB_MODE:-offline}" MPLBACKEND=Agg
python -m fme.ace.data.shallow_water --out data/shallow_water
python -m fme.ace.train configs/shallow_water.yaml "$@"
python -m fme.ace.evaluate configs/shallow_water_evaluate.yaml
