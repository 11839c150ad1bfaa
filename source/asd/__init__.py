"""asd: anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions).

The command line is `asd` (`asd.cli`); notebooks use the few functions of `asd.api`, re-exported here:
`open_cache`, `fit`, `score`, `score_files`, `load_run`. They are imported on first use, so `import asd`
(and the command line's `--help`) stays fast.
"""

__version__ = "0.1.0"

_API = ("open_cache", "fit", "score", "score_files", "load_run")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from asd import api

        return getattr(api, name)
    raise AttributeError(f"module 'asd' has no attribute {name!r}")
