"""The near cache: a bounded in-process LRU of entries read from Redis, kept coherent
by Redis itself.

Each process holds one tracking connection per Redis primary, on which it asked
for ``CLIENT TRACKING ON BCAST`` over the prefixes of user and token entries:
Redis then pushes the name of every such key anyone changes, deletes or lets
expire, and the process drops it. Three rules make that enough:

* **Drained before served.** Every read of the near cache first applies every
  invalidation already on the tracking connection (a poll of its socket, no
  round trip). A write's invalidation is queued on that socket before the writer
  hears its DEL answered; by the time the writer has acknowledged its request
  and a client has asked this process, the message is there to be applied.
* **Stored only if not invalidated since.** A value read from Redis is kept only
  if no invalidation of its key was applied after the read began (a stamp taken
  before it): an invalidation that overtakes the reply cannot be lost.
* **Nothing without tracking.** Until tracking is up, and from the moment a
  tracking connection fails (a restart, a failover, a network error), the near
  cache is emptied and every read goes to Redis, until tracking is back.

Entries also leave after ``NEAR_CACHE_MAX_AGE`` seconds, however quiet Redis
is, and when the cache is full (least recently used first).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Iterable

from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from .. import metrics
from ..conf import user_cache_settings
from . import keys
from .transport import UNAVAILABLE, client

logger = logging.getLogger(__name__)

Entry = dict[str, str]

# How often the tracker checks its connections (a PING), and reconnects when down.
_CHECK_EVERY_S = 1.0


class NearCache:
    """One per process (``near``). Thread-safe: one lock guards the entries, the
    invalidation bookkeeping and the tracking connections' reading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[Entry, float]] = collections.OrderedDict()
        # The sequence number of each key's last invalidation, for the stamp rule; a
        # bounded map: keys pruned from it count as invalidated at _pruned_up_to.
        self._sequence = 0
        self._invalidated: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pruned_up_to = 0
        self._connections: list = []
        # The (host, port) of each tracked primary, on a cluster.
        self._tracked: set[tuple[str, int]] = set()
        self._tracking = False
        self._next_attempt = 0.0
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(user_cache_settings.NEAR_CACHE_SIZE)

    def stamp(self) -> int | None:
        """Taken before a Redis read whose result may be kept; None while the near
        cache is off or not tracking."""
        if not self.enabled:
            return None
        self._ensure_tracker()
        return self._sequence if self._tracking else None

    def get_many(self, entry_keys: Iterable[str]) -> dict[str, Entry]:
        """The entries held for these keys, after applying every invalidation already
        received; empty while not tracking."""
        if not self.enabled:
            return {}
        self._ensure_tracker()
        found = {}
        now = time.monotonic()
        with self._lock:
            if not self._drain():
                return {}
            for key in entry_keys:
                held = self._entries.get(key)
                if held is None:
                    continue
                if held[1] < now:
                    del self._entries[key]
                    continue
                self._entries.move_to_end(key)
                found[key] = held[0]
        metrics.NEAR_CACHE_LOOKUPS.labels("hit").inc(len(found))
        return found

    def put_many(self, entries: dict[str, Entry], stamp: int | None) -> None:
        """Keeps entries read from Redis after ``stamp``, unless one of their keys was
        invalidated since (or tracking failed meanwhile)."""
        if stamp is None or not entries:
            return
        expires = time.monotonic() + user_cache_settings.NEAR_CACHE_MAX_AGE
        with self._lock:
            if not self._drain() or stamp < self._pruned_up_to:
                return
            size = user_cache_settings.NEAR_CACHE_SIZE
            if self._untracked(entries):
                self._lose_tracking("a cluster primary is not tracked")
                return
            for key, entry in entries.items():
                if self._invalidated.get(key, -1) > stamp:
                    continue
                self._entries[key] = (entry, expires)
                self._entries.move_to_end(key)
            evicted = 0
            while len(self._entries) > size:
                self._entries.popitem(last=False)
                evicted += 1
            metrics.NEAR_CACHE_SIZE.set(len(self._entries))
        if evicted:
            metrics.NEAR_CACHE_EVICTIONS.inc(evicted)

    def invalidate(self, entry_keys: Iterable[str]) -> None:
        """Drops keys this process changed, before its write is acknowledged."""
        with self._lock:
            self._apply(entry_keys)

    def _untracked(self, entry_keys: Iterable[str]) -> bool:
        """On a cluster, whether a key lives on a primary with no tracking connection
        (one added, or a slot moved, since tracking began): its invalidations would
        never arrive, so nothing is kept until tracking covers every primary again."""
        redis = client()
        if not isinstance(redis, RedisCluster):
            return False
        return any(
            (node.host, node.port) not in self._tracked
            for node in map(redis.get_node_from_key, entry_keys)
        )

    def count_miss(self, count: int) -> None:
        if self.enabled and count:
            metrics.NEAR_CACHE_LOOKUPS.labels("miss").inc(count)

    # Tracking.

    def _apply(self, entry_keys: Iterable[str] | None) -> None:
        """An invalidation: of these keys, or of everything (None: a FLUSHDB)."""
        self._sequence += 1
        if entry_keys is None:
            self._entries.clear()
            self._pruned_up_to = self._sequence
            self._invalidated.clear()
        else:
            for key in entry_keys:
                self._entries.pop(key, None)
                self._invalidated[key] = self._sequence
                self._invalidated.move_to_end(key)
            limit = 2 * max(user_cache_settings.NEAR_CACHE_SIZE, 1)
            while len(self._invalidated) > limit:
                _key, sequence = self._invalidated.popitem(last=False)
                self._pruned_up_to = max(self._pruned_up_to, sequence)
        metrics.NEAR_CACHE_INVALIDATIONS.inc()
        metrics.NEAR_CACHE_SIZE.set(len(self._entries))

    def _drain(self) -> bool:
        """Applies every invalidation waiting on the tracking connections; False (and
        the near cache emptied) when tracking is down. Call with the lock held."""
        if not self._tracking:
            return False
        try:
            for connection in self._connections:
                while connection.can_read(timeout=0):
                    connection.read_response(push_request=True)
        except (*UNAVAILABLE, OSError) as exc:
            self._lose_tracking(exc)
            return False
        return True

    def _on_push(self, response: list) -> list:
        """redis-py's handler for invalidation pushes: ``[b"invalidate", keys or None]``."""
        invalidated = response[1]
        self._apply(None if invalidated is None else [key.decode() for key in invalidated])
        return response

    def _lose_tracking(self, reason: object) -> None:
        logger.warning("near cache emptied: tracking lost (%s)", reason)
        self._tracking = False
        self._entries.clear()
        self._apply(None)
        for connection in self._connections:
            with contextlib.suppress(Exception):
                connection.disconnect()
        self._connections = []

    def _ensure_tracker(self) -> None:
        """Connects when not tracking, at most every ``OUTBOX_RETRY_MS`` (one round
        trip per primary, on the reading thread: a process's first reads are then
        already tracked), and starts the thread that checks the connections."""
        if not self._tracking and time.monotonic() >= self._next_attempt:
            with self._lock:
                if not self._tracking and time.monotonic() >= self._next_attempt:
                    self._next_attempt = (
                        time.monotonic() + user_cache_settings.OUTBOX_RETRY_MS / 1000
                    )
                    self._connect()
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._check_forever, name="near-cache-tracking", daemon=True
                    )
                    self._thread.start()

    def _check_forever(self) -> None:
        """Drains and PINGs the tracking connections every second, so that a quiet
        process neither lets invalidations pile up nor misses a dead connection.
        Reconnecting is left to the reading threads (``_ensure_tracker``)."""
        while True:
            time.sleep(_CHECK_EVERY_S)
            with self._lock:
                if self._tracking:
                    self._check()

    def forget(self) -> None:
        """Empties the near cache and drops tracking; the next read reconnects to
        whatever Redis and prefix the settings name now."""
        with self._lock:
            if self._tracking:
                self._lose_tracking("the cache settings changed")
            self._next_attempt = 0.0

    def _check(self) -> None:
        """Drains, then PINGs each connection: a half-open connection is lost here."""
        if not self._drain():
            return
        try:
            for connection in self._connections:
                connection.send_command("PING")
                while connection.read_response(push_request=True) != b"PONG":
                    pass
        except (*UNAVAILABLE, OSError) as exc:
            self._lose_tracking(exc)

    def _connect(self) -> None:
        """One tracking connection per primary, RESP3, BCAST over the entries' prefixes."""
        prefixes = [keys.user_key_prefix(), keys.token_key_prefix()]
        opened = []
        tracked = set()
        try:
            for address, pool in _primary_pools(client()):
                connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
                opened.append(connection)
                connection.connect()
                connection._parser.set_invalidation_push_handler(self._on_push)
                command = ["CLIENT", "TRACKING", "ON", "BCAST"]
                for prefix in prefixes:
                    command += ["PREFIX", prefix]
                connection.send_command(*command)
                connection.read_response()
                tracked.add(address)
        except (*UNAVAILABLE, OSError, RedisError) as exc:
            logger.debug("near cache: tracking not up yet: %s", exc)
            for connection in opened:
                with contextlib.suppress(Exception):
                    connection.disconnect()
            return
        self._entries.clear()
        self._connections = opened
        self._tracked = tracked
        self._tracking = True
        metrics.NEAR_CACHE_TRACKING_CONNECTS.inc()
        logger.info("near cache tracking up on %d connection(s)", len(opened))


def _primary_pools(redis) -> list:
    """(host, port) and connection pool of each primary; one server's address is
    not needed (None)."""
    if isinstance(redis, RedisCluster):
        return [
            ((node.host, node.port), redis.get_redis_connection(node).connection_pool)
            for node in redis.get_primaries()
        ]
    return [(None, redis.connection_pool)]


near = NearCache()


@receiver(setting_changed)
def _forget_on_new_settings(*, setting: str, **kwargs) -> None:
    """A changed CACHES names another Redis; a changed USERS_CACHE may name another
    prefix or size."""
    if setting in ("CACHES", "USERS_CACHE"):
        near.forget()
