"""One search per name at a time: two drivers writing the same search folder would interleave their
trials, Optuna studies and search.json. ``search_lock`` holds an exclusive lock on the folder for the
life of the search, so a second ``python -m automl_factor.search --name X`` (or ``--resume``) stops at
once with a one-line error instead of corrupting the first.

Local folders only (and file:// URIs): object stores (s3://, gs://, ...) have no atomic lock to take,
so for those it is up to the user to run one driver per name. The lock is ``fcntl.flock``, released by
the kernel when the holder exits, however it exits: no stale locks to clean up. On network filesystems
flock works only as well as the filesystem supports it (NFSv4 does).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from ..cli import UsageError

__all__ = ["search_lock", "LOCK_FILE"]

LOCK_FILE = ".lock"  # in the search's folder; holds "pid host" of the driver holding it


@contextlib.contextmanager
def search_lock(run_uri: str) -> Iterator[None]:
    """Hold the lock of the search in ``run_uri`` (its folder, made if missing) until the block ends.
    Raises ``UsageError`` when another process holds it."""
    if "://" in run_uri and not run_uri.startswith("file://"):
        yield  # an object store: no lock (see the module's docstring)
        return
    folder = Path(urlparse(run_uri).path if run_uri.startswith("file://") else run_uri)
    folder.mkdir(parents=True, exist_ok=True)
    # Not O_TRUNC: the holder's pid must stay readable to whoever fails to take the lock. The file is
    # never deleted: a process that opened it just before a delete would lock a file nobody else sees.
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid, host = holder if len(holder) == 2 else ("?", "?")  # the holder has not written it yet
            raise UsageError(f"search {folder.name!r} is running in another process (pid {pid} on {host}); "
                             f"wait for it or pick another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
