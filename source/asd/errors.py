"""The project's own error types: bad input or bad state. The command line prints these as one line and exits 2; any other exception is a bug and keeps its traceback."""
# The commands a message advises, with an interpreter that has the project installed (scripts/install.sh
# makes .venv/; a bare `python` usually lacks the dependencies and ends in a ModuleNotFoundError).
PREP_COMMAND = ".venv/bin/python source/data_prep.py"
MAIN_COMMAND = ".venv/bin/python source/main.py"


class AsdError(Exception):
    """Base class of every error the user can fix (bad input, bad state, missing files)."""


class BadInput(AsdError):
    """An option, argument or input file the command cannot use as given (the message says why)."""


class BadState(AsdError):
    """Something on disk is not as it must be (a stale or damaged cache, a full disk, a leftover)."""


class MissingModel(AsdError):
    """A trained model the command needs is not in the run folder."""


class DamagedFile(AsdError):
    """A file the project wrote is truncated or not what it should be (the message says how to rebuild it)."""


class ShardWriteFailed(BadState):
    """A shard could not be written or did not read back as written; nothing was committed."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"writing {path} failed: {reason}")
        self.path = str(path)
        self.reason = reason
