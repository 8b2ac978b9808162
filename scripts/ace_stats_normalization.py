"""ACE's ``normalization`` block for a directory of ACE's statistics files.

ACE keeps a dataset's statistics as ``centering.nc`` (means),
``scaling-full-field.nc`` (stds of the fields) and ``scaling-residual.nc``
(stds of one-step changes). Scripts run with this project's venv and scripts
run with the released package's venv both import this module by name (running
``python scripts/<name>.py`` puts ``scripts/`` on the path), so it imports
neither package.
"""

from pathlib import Path
from typing import Any


def ace_normalization(stats_dir: Path) -> dict[str, Any]:
    """The ``normalization`` of a ``single_module`` step for ``stats_dir``.

    Args:
        stats_dir: the directory holding ACE's three statistics files.

    Returns:
        ``{"network": ..., "residual": ...}``: the full-field and the residual
        normalisation, both centred on ``centering.nc``, with string paths.
    """
    means = str(stats_dir / "centering.nc")
    return {
        "network": {
            "global_means_path": means,
            "global_stds_path": str(stats_dir / "scaling-full-field.nc"),
        },
        "residual": {
            "global_means_path": means,
            "global_stds_path": str(stats_dir / "scaling-residual.nc"),
        },
    }
