"""Tests of ``fme.ace`` share the small builders in ``tests/ace/stepper``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "stepper"))
