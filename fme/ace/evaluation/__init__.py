"""Evaluation of trained emulators: rollout metrics, prediction files and plots."""
