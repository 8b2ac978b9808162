"""Training entry point: ``python -m fme.ace.train CONFIG.yaml [--override k=v]``."""
