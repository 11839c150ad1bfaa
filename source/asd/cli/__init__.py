"""The command line (`asd`, `python source/main.py`, `python source/data_prep.py`): options in, one stage out."""

from asd.cli.main import main

__all__ = ["main"]
