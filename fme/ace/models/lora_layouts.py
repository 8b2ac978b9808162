"""Which layers of fme's networks LoRA can adapt, and the layout of their weights.

Passed to ``fme.core.lora.apply_lora`` so the core LoRA code stays unaware of
particular networks.
"""

from torch import nn

from fme.ace.models.pointwise import PointwiseLinear
from fme.ace.models.sfno import SpectralConvS2
from fme.core.lora import (
    DEFAULT_LAYOUTS,
    MODES_IN_OUT_COMPLEX,
    OUT_IN,
    AdaptableWeight,
)

LORA_LAYOUTS: dict[type[nn.Module], AdaptableWeight] = {
    **DEFAULT_LAYOUTS,
    # weight [out, in]
    PointwiseLinear: AdaptableWeight("weight", OUT_IN),
    # weight [lmax, in, out, 2] (dhconv) or [lmax, mmax, in, out, 2] (diagonal)
    SpectralConvS2: AdaptableWeight("weight", MODES_IN_OUT_COMPLEX),
}
