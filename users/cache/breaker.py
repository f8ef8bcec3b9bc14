"""The circuit breaker in front of Redis."""

from __future__ import annotations

import threading
import time

from .. import metrics
from ..conf import user_cache_settings


class CircuitBreaker:
    """Opens after ``BREAKER_FAILURES`` consecutive failures; while open, calls fail
    at once instead of each request waiting for a timeout. After
    ``BREAKER_COOLDOWN_MS`` one call probes Redis: success closes the breaker,
    failure opens it again. Per process, like the connection pool; its state is
    the process's sample of ``usersvc_cache_breaker_open``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def allow(self) -> bool:
        if not self._open_until:
            return True
        with self._lock:
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def record_success(self) -> None:
        if self._failures or self._open_until:
            with self._lock:
                if self._open_until:
                    metrics.BREAKER_OPEN.set(0)
                self._failures, self._open_until, self._probing = 0, 0.0, False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= user_cache_settings.BREAKER_FAILURES:
                if not self._open_until:
                    metrics.BREAKER_OPEN.set(1)
                    metrics.BREAKER_OPENINGS.inc()
                cooldown = user_cache_settings.BREAKER_COOLDOWN_MS / 1000
                self._open_until = time.monotonic() + cooldown
