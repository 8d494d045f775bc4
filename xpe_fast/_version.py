"""The package version, a leaf (adapters record it)."""

__version__ = "0.1.0"
