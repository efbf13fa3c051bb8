"""The package version, written once: pyproject.toml reads it (a dynamic version) and the package
re-exports it as `panoptic_train.__version__`. A module of its own, so that code in any layer
can name the version without importing the public API above it."""

__version__ = "0.1.0"
