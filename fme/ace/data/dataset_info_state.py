"""Plain-data (checkpointable) form of ``DatasetInfo``."""

import datetime
from typing import Any

import torch

from fme.ace.data.batch import DatasetInfo, HybridSigmaPressureCoordinate


def dataset_info_to_state(info: DatasetInfo) -> dict[str, Any]:
    """``DatasetInfo`` as lists, floats and strings."""
    vertical = None
    if info.vertical_coordinate is not None:
        vertical = {
            "ak": info.vertical_coordinate.ak.tolist(),
            "bk": info.vertical_coordinate.bk.tolist(),
        }
    return {
        "lat": info.lat.tolist(),
        "lon": info.lon.tolist(),
        "timestep_seconds": info.timestep.total_seconds(),
        "vertical_coordinate": vertical,
        "variable_metadata": info.variable_metadata,
    }


def dataset_info_from_state(state: dict[str, Any]) -> DatasetInfo:
    """Inverse of ``dataset_info_to_state``."""
    vertical = None
    if state["vertical_coordinate"] is not None:
        vertical = HybridSigmaPressureCoordinate(
            ak=torch.tensor(state["vertical_coordinate"]["ak"]),
            bk=torch.tensor(state["vertical_coordinate"]["bk"]),
        )
    return DatasetInfo(
        lat=torch.tensor(state["lat"]),
        lon=torch.tensor(state["lon"]),
        timestep=datetime.timedelta(seconds=state["timestep_seconds"]),
        vertical_coordinate=vertical,
        variable_metadata=state["variable_metadata"],
    )
