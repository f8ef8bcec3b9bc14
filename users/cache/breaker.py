"""The circuit breakers in front of Redis: one per node a call can reach."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

from .. import metrics
from ..conf import user_cache_settings


class CircuitBreaker:
    """Opens after ``BREAKER_FAILURES`` consecutive failures; while open, calls fail
    at once instead of each request waiting for a timeout. After
    ``BREAKER_COOLDOWN_MS`` one call probes the node: success closes the breaker,
    failure opens it again. A call that need not fail fast (a write's own
    invalidation, the outbox's replay) goes through whatever the state, and its
    outcome counts the same way. Its state is the process's sample of
    ``usersvc_cache_breaker_open`` for its node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        # The node's samples exist, at 0, from its first call on.
        metrics.BREAKER_OPEN.labels(node).set(0)
        metrics.BREAKER_OPENINGS.labels(node)

    @property
    def is_open(self) -> bool:
        return self._open_until > 0

    def allow(self) -> bool:
        """Whether a call may go now; past the cooldown, one call at a time (the
        probe), until it reports its outcome or gives its turn back (``release``)."""
        if not self._open_until:
            return True
        with self._lock:
            if time.monotonic() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def release(self) -> None:
        """Gives back a probe's turn without an outcome: the call it was granted to
        failed on another node, or never reached this one."""
        if self._probing:
            with self._lock:
                self._probing = False

    def record_success(self) -> None:
        if self._failures or self._open_until:
            with self._lock:
                if self._open_until:
                    metrics.BREAKER_OPEN.labels(self.node).set(0)
                self._failures, self._open_until, self._probing = 0, 0.0, False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= user_cache_settings.BREAKER_FAILURES:
                if not self._open_until:
                    metrics.BREAKER_OPEN.labels(self.node).set(1)
                    metrics.BREAKER_OPENINGS.labels(self.node).inc()
                cooldown = user_cache_settings.BREAKER_COOLDOWN_MS / 1000
                self._open_until = time.monotonic() + cooldown

    def close(self) -> None:
        """Forgets the failures: the node is gone from the topology."""
        self.record_success()


class Breakers:
    """The process's breakers, by node: on a Redis Cluster one per primary (its
    ``host:port``), so that a failing shard fails fast without failing the calls
    to the others; on a single server or behind Sentinel one, ``SERVER``,
    whichever primary the sentinels name."""

    SERVER = "server"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, CircuitBreaker] = {}

    def __getitem__(self, node: str) -> CircuitBreaker:
        breaker = self._by_node.get(node)
        if breaker is None:
            with self._lock:
                breaker = self._by_node.setdefault(node, CircuitBreaker(node))
        return breaker

    @property
    def is_open(self) -> bool:
        """Whether any node's breaker is open."""
        return any(breaker.is_open for breaker in list(self._by_node.values()))

    def open_nodes(self) -> list[str]:
        return [node for node, breaker in list(self._by_node.items()) if breaker.is_open]

    def keep_only(self, nodes: Collection[str]) -> None:
        """Drops the breakers of nodes no longer in the topology (a primary a replica
        took over from): no key leads to one any more, so nothing would probe it,
        and its gauge would show it open for ever."""
        with self._lock:
            gone = [node for node in self._by_node if node not in nodes]
            for node in gone:
                self._by_node.pop(node).close()
