#!/usr/bin/env bash
# Create ./.venv and install fme with pinned dependencies. Idempotent: a second
# call with unchanged pyproject.toml and constraints.txt installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${FME_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
stamp=.venv/.fme-install-stamp
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
# Bytecode of the package, as pip writes it for an installed package; an
# editable install does not, and where PYTHONDONTWRITEBYTECODE is set every
# run would compile all of fme again (a few tenths of a second of start-up).
# Only stale files are rewritten; Python ignores any that no longer match.
.venv/bin/python -m compileall -q fme
