"""MLflow calls made off the Tune loop, in order, retried until the tracking server answers.

A tracking server that is down must not stop a search: before, each MLflow call blocked the Tune
loop through MLflow's own retries (four minutes), then the exception ended the search. Here the
tracker hands each call to one background thread, which makes them in the order given and, while
the server is unreachable, waits and tries the same call again (for as long as it takes: nothing
is dropped but calls MLflow itself rejects as invalid). The trial table in Parquet is written
directly, so it is always complete; MLflow catches up once the server is back, and ``flush`` lets
the end of a search wait for it (bounded, with progress lines).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

__all__ = ["MlflowQueue"]

logger = logging.getLogger(__name__)
Call = Callable[[MlflowClient], object]


def _rejected(error: Exception) -> bool:
    """A call MLflow refuses for what it says (HTTP 4xx: bad value, missing run), which no retry
    fixes, as opposed to an unreachable or failing server."""
    return isinstance(error, MlflowException) and 400 <= error.get_http_status_code() < 500


class MlflowQueue:
    """Runs ``call(client)`` for each submitted call on a background thread, in submission order."""

    def __init__(self, tracking_uri: str, *, max_delay_s: float = 30.0, log=print):
        self.tracking_uri, self.max_delay_s, self.log = tracking_uri, max_delay_s, log
        self._calls: queue.Queue[Call] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.unreachable_since: float | None = None  # when the current outage began, if one is on
        self.dropped = 0

    def submit(self, call: Call) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="mlflow-queue", daemon=True)
                self._thread.start()
        self._calls.put(call)

    @property
    def pending(self) -> int:
        return self._calls.unfinished_tasks

    def flush(self, timeout_s: float = 300.0, every_s: float = 30.0) -> int:
        """Wait until every call is made or ``timeout_s`` passed; return the calls still waiting."""
        deadline, next_line = time.monotonic() + timeout_s, time.monotonic() + every_s
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= next_line and self.unreachable_since is not None:
                self.log(f"waiting for MLflow at {self.tracking_uri}: unreachable for "
                         f"{time.time() - self.unreachable_since:.0f} s, {self.pending} updates queued")
                next_line += every_s
        return self.pending

    def _work(self) -> None:
        client = MlflowClient(self.tracking_uri)
        while True:
            call = self._calls.get()
            delay = 1.0
            while True:
                try:
                    call(client)
                    if self.unreachable_since is not None:
                        self.log(f"MLflow is back after {time.time() - self.unreachable_since:.0f} s; "
                                 f"catching up on {self.pending} updates")
                        self.unreachable_since = None
                    break
                except Exception as error:  # noqa: BLE001 - whatever the server does, the search goes on
                    if _rejected(error):
                        self.dropped += 1
                        logger.warning("MLflow rejected an update (%s); skipped", error)
                        break
                    if self.unreachable_since is None:
                        self.unreachable_since = time.time()
                        self.log(f"MLflow at {self.tracking_uri} unreachable ({type(error).__name__}); the search "
                                 f"goes on, the trial table is written as usual, MLflow catches up when it is back")
                    time.sleep(delay)
                    delay = min(2 * delay, self.max_delay_s)
            self._calls.task_done()
