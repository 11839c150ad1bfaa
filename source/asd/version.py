"""The package version, written into every shard and shown by `scripts/install.sh` (keep it equal to the
version in pyproject.toml)."""

__version__ = "0.1.0"
