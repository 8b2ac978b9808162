"""Type aliases for the dicts of tensors that cross module boundaries.

Tensors are keyed by physical variable name. The documented layout is
``[batch, time, lat, lon]`` for windows of data and ``[batch, lat, lon]`` for a
single time step.
"""

from collections.abc import Mapping

import torch

TensorMapping = Mapping[str, torch.Tensor]
TensorDict = dict[str, torch.Tensor]
