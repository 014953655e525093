"""The package version, written in this one place: pyproject.toml reads it
statically at build time and `rlm_fast.__version__` imports it."""

__version__ = "0.1.0"
