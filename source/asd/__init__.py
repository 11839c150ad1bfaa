"""asd: anomalous sound detection on cached 1-second segments (DCASE Task 2 conventions).

The command line is `asd` (`asd.cli`); notebooks use the few functions of `asd.api`, handed on here:
`open_cache`, `fit`, `score`, `score_files`, `load_run` (they import torch only when called).
"""

from asd.api import fit, load_run, open_cache, score, score_files
from asd.version import __version__

__all__ = ["__version__", "fit", "load_run", "open_cache", "score", "score_files"]
