"""Dask as a way to execute the stages past one machine: `--scheduler local[:N]` starts a `LocalCluster` of N
worker processes (one thread each) on this machine; any other value is the address of a running
`dask.distributed` scheduler (e.g. one started by dask-jobqueue on SLURM).

Only execution lives here. What runs is what a run without a scheduler runs: data_prep's shards
(`asd.cache.build.build_shard_task`) and the stages' machine tasks (`asd.engine.stages.run_machine`),
planned and reported by the same code on the client. Workers read and write the same folders as the
client, so those must be on storage every worker sees.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from asd.errors import BadInput

_LOCAL = re.compile(r"^local(?::(?P<n>\d+))?$")


def check_scheduler(spec: str) -> str:
    """`local`, `local:N` (N >= 1) or a scheduler address (tcp://host:port, tls://..., host:port)."""
    match = _LOCAL.match(spec)
    if match and (match["n"] is None or int(match["n"]) >= 1):
        return spec
    if not match and re.match(r"^([a-z]+://)?[\w.\-\[\]:]+:\d+$", spec):
        return spec
    raise BadInput(f"--scheduler {spec!r}: expected local, local:N or a scheduler address like "
                   "tcp://10.0.0.5:8786")


CONNECT_SECONDS = 10  # how long a scheduler address may take to answer before the command gives up


def probe_scheduler(spec: str, seconds: float = CONNECT_SECONDS) -> None:
    """A scheduler address must accept a connection now: BadInput naming it otherwise (refused, no route,
    unknown host or silence), in at most `seconds`, before any work starts."""
    address = spec.split("://", 1)[-1]
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            pass
    except (OSError, ValueError) as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (getattr(err, "strerror", None) or str(err))
        raise BadInput(f"--scheduler {spec}: no scheduler can be reached there ({reason}); start one with "
                       "`dask scheduler` and check the address, or use --scheduler local") from None


@contextmanager
def connect(spec: str):
    """A dask.distributed Client for `spec` (see `check_scheduler`); a local cluster is closed afterwards."""
    from dask.distributed import Client, LocalCluster

    match = _LOCAL.match(check_scheduler(spec))
    if match:
        n = int(match["n"] or max(1, (os.cpu_count() or 2) // 2))
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client
    else:
        with Client(spec, timeout=f"{CONNECT_SECONDS}s") as client:
            yield client


class DaskExecutor:
    """Runs tasks on Dask workers. Connects on first use (nothing to do, no cluster started) and closes a
    local cluster when its `with` block ends. A task that raises re-raises here with its traceback: only a
    bug does (the stages turn the project's own errors into results)."""

    remote = True

    def __init__(self, spec: str, log: Callable[[str], None] = print) -> None:
        self.spec = check_scheduler(spec)
        self.log = log
        self._stack = ExitStack()
        self._client = None
        if not _LOCAL.match(self.spec):  # a remote scheduler must answer now, not after the planning
            probe_scheduler(self.spec)
            self._connect()

    def _connect(self) -> None:
        """The client, connected once. Connecting is a probe of the environment: whatever stops it (a port
        that answers but is no Dask scheduler, a timeout, a version mismatch) is one line naming the address."""
        try:
            self._client = self._stack.enter_context(connect(self.spec))
        except Exception as err:
            self._stack.close()
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise BadInput(f"--scheduler {self.spec}: cannot connect to a Dask scheduler there ({reason}); check "
                           "the address, or use --scheduler local") from None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def map(self, function: Callable, argument_lists: Iterable[tuple], label: str = "task"
            ) -> Iterator[tuple[tuple, Any]]:
        """`function(*arguments)` for every argument tuple, as Dask tasks; yields (arguments, result) as
        tasks finish."""
        argument_lists = list(argument_lists)
        if not argument_lists:
            return
        from dask.distributed import as_completed

        if self._client is None:
            self._connect()
        workers = len(self._client.scheduler_info()["workers"])
        self.log(f"{len(argument_lists)} {label}(s) on {workers} worker(s)")
        futures = {self._client.submit(function, *arguments, pure=False): arguments for arguments in argument_lists}
        for future in as_completed(futures):
            yield futures[future], future.result()
