"""The one way this service runs work in the background: a daemon thread per
process and purpose, started on first use and started again should it ever die,
so that a fork (gunicorn's workers) or a crash never leaves a process without
it. Each owner (the outbox, the near cache's tracker, the rate counts) keeps
one ``Worker`` and calls ``ensure`` on its way."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Worker:
    def __init__(self, name: str, run: Callable[[], None]) -> None:
        self.name = name
        self._run = run
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Whether the thread was ever started: read on every request by owners whose
        # worker starts only when needed, so a plain attribute, not a property.
        self.started = False

    def ensure(self) -> None:
        """Starts the thread unless it runs; cheap when it does."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                self.started = True
