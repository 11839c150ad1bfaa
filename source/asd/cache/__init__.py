"""wav -> 1-second segments -> HDF5 shards under data/processed, and reading them back."""
