"""The cases of ``scripts/benchmark.py``, one module per family."""
