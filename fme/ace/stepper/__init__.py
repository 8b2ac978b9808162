"""Rollouts of a step over many times, and training of those rollouts."""
