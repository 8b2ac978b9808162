#!/usr/bin/env bash
# The test command: install, lint (ruff), type-check (mypy), run pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
export PATH="$root/.venv/bin:$PATH"
export WANDB_MODE=offline WANDB_SILENT=true MPLBACKEND=Agg
ruff check fme tests scripts
ruff format --check fme tests scripts
mypy fme
set +e
python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
