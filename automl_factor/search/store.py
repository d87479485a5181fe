"""Setting up the MLflow tracking store once, safely, before a search uses it.

MLflow creates and migrates a sqlite store's schema the first time a process opens it. Two searches
started at once on a fresh ``mlflow.db`` both ran the migrations and one crashed ("duplicate column
name: step"). ``init_tracking_store`` opens the store under an exclusive ``fcntl.flock`` on
``<db>.lock`` beside the database, so one process migrates and the others find the schema done.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["init_tracking_store"]


def init_tracking_store(uri: str) -> None:
    """Open the tracking store at ``uri`` once (creating or migrating its schema); for a sqlite file,
    one process at a time. Other stores are opened without a lock: a server migrates its own store,
    and databases shared between machines cannot be locked with a local file."""
    from mlflow.tracking import MlflowClient

    with _sqlite_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)  # the first call creates the store's tables


@contextlib.contextmanager
def _sqlite_lock(uri: str):
    path = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    fd = os.open(Path(path).with_name(Path(path).name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another process sets the store up
        yield
    finally:
        os.close(fd)
