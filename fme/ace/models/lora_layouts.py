"""Which layers of fme's networks LoRA can adapt, and the layout of their weights.

Passed to ``fme.core.lora.apply_lora`` so the core LoRA code stays unaware of
particular networks.
"""

from torch import nn

from fme.ace.models.pointwise import PointwiseLinear
from fme.ace.models.sfno import SpectralConvS2
from fme.core.lora import (
    DEFAULT_LAYOUTS,
    IN_OUT_MODES_COMPLEX,
    OUT_IN,
    AdaptableWeight,
)

LORA_LAYOUTS: dict[type[nn.Module], AdaptableWeight] = {
    **DEFAULT_LAYOUTS,
    # weight [out, in] or [out, in, 1, 1]
    PointwiseLinear: AdaptableWeight("weight", OUT_IN),
    # ACE's weight (in, out, lmax, 2) (dhconv) or (in, out, lmax, mmax, 2)
    SpectralConvS2: AdaptableWeight("weight", IN_OUT_MODES_COMPLEX),
}
