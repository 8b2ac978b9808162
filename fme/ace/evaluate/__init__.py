"""Evaluation entry point: ``python -m fme.ace.evaluate CONFIG.yaml``."""
