"""When the SFNO's blocks recompute in backward instead of storing.

Two places trade time for memory the same way: the block MLP recomputes its
hidden activation (``pointwise.recomputed_then_linear``) and the dhconv
recomputes the spectrum of its input (``dhconv.analysis_then_dhconv``). Both
do so only on fields of at least ``RECOMPUTE_FROM_ELEMENTS`` elements. Below
it (every field up to a batch of 4 at 1 degree with 32 channels) the memory
saved is small and recomputing costs a tenth of a small step's time; above it
(ACE2's 384 channels at 1 degree) the stored tensors are a large share of the
peak.
"""

RECOMPUTE_FROM_ELEMENTS = 1 << 24


def recomputes(n_elements: int) -> bool:
    """Whether a field of ``n_elements`` elements is recomputed, not stored."""
    return n_elements >= RECOMPUTE_FROM_ELEMENTS
