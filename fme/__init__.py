"""fme: train autoregressive weather and climate emulators with corrector-aware losses."""

__version__ = "0.1.0"
