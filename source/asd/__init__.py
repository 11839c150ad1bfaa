"""asd: anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions)."""

__version__ = "0.1.0"
