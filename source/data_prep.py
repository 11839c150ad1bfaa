"""Entry script: cache every clip under data/raw as 1-second segments in HDF5 shards.

    python source/data_prep.py [--raw-dir data/raw] [--out-dir data/processed] [--jobs N] ...

See `python source/data_prep.py --help`; the work is done in `asd.cache.build`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from a checkout without installing

from asd.cli.prep import prep_command  # noqa: E402

if __name__ == "__main__":
    prep_command()
