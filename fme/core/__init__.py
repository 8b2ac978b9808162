"""Atmosphere-agnostic building blocks: config, losses, optimisation, training loop."""
