"""Entry script: make synthetic data, train, test, score and inspect.

    python source/main.py             # train then test every machine type in data/processed
    python source/main.py --help      # all subcommands

The work is done in the `asd` package; this file only starts its command line.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

from asd.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
