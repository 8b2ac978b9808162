import pytest

from fme.ace.models import recomputation


@pytest.fixture
def always_recompute(monkeypatch):
    """Recompute in backward at any size (the tests' fields are below
    ``RECOMPUTE_FROM_ELEMENTS``, where the blocks store instead)."""
    monkeypatch.setattr(recomputation, "RECOMPUTE_FROM_ELEMENTS", 0)
