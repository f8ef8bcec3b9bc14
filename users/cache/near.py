"""The near cache: a bounded in-process LRU of entries read from Redis, kept coherent
by Redis itself. Only ``users.cache.store`` uses it.

Each process holds one tracking connection per Redis primary
(``users/cache/tracking.py``), on which it asked for ``CLIENT TRACKING ON BCAST
NOLOOP`` over the prefixes of the kinds it holds (``users.cache.kinds``): Redis
then pushes the name of every such key anyone else changes, deletes or lets
expire, and the process drops it. Four rules make that enough:

* **Drained before served.** Every read of the near cache first applies every
  invalidation already on the tracking connections (a poll of their sockets, no
  round trip). Redis sends a write's invalidation in the same pass of its event
  loop as the writer's answer; by the time the writer has acknowledged its
  request and a client has asked this process, the message has normally arrived
  (docs/near-cache.md gives the cases where it has not, and their bounds). A
  read that finds a tracking connection in another thread's hands (a fill
  waiting for its reply) cannot know that, and goes to Redis.
* **Stored only if not invalidated since.** A value read from Redis, or stored
  there by this process's fill, is kept only if no invalidation of its key was
  applied after the read or fill began (a stamp taken before it): an
  invalidation that overtakes the reply cannot be lost. Fills go out on the
  tracking connections, whose NOLOOP spares them their own invalidation
  (``fill``): what a miss stored is held at once.
* **Own writes dropped twice.** A write of this process drops its keys before
  it changes Redis and again after (``users.cache.store.write``).
* **Nothing without tracking.** Until tracking is up, and from the moment a
  tracking connection fails, or answers no PING for a second (a restart, a
  failover, a network error), the near cache is emptied and every read goes to
  Redis, until tracking is back.

Entries also leave after ``NEAR_CACHE_MAX_AGE`` seconds, counted from when they
were read, or at the expiry they carry if that is sooner, however quiet Redis
is, and when the cache is full (least recently used first). Only present
entries are held, never a cached absence. No network wait happens under the
lock that reads take: connecting and checking are a thread's
(``near-cache-tracking``, ``users.cache.near_upkeep``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Sequence

from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import metrics
from ..conf import user_cache_settings
from . import kinds
from .background import Worker
from .kinds import EXPIRES, Entry
from .near_upkeep import Upkeep
from .tracking import Tracking, TrackingBusy, TrackingLost

logger = logging.getLogger(__name__)

# The lookup counters, resolved once: every read counts itself.
_HITS = metrics.NEAR_CACHE_LOOKUPS.labels("hit")
_MISSES = metrics.NEAR_CACHE_LOOKUPS.labels("miss")


class NearCache(Upkeep):
    """One per process (``near``). Thread-safe: one lock guards the entries and the
    invalidation bookkeeping; each tracking connection has its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, tuple[Entry, float]] = collections.OrderedDict()
        # The sequence number of each key's last invalidation, for the stamp rule; a
        # bounded map: keys pruned from it count as invalidated at _pruned_up_to.
        self._sequence = 0
        self._invalidated: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._pruned_up_to = 0
        self._tracking: Tracking | None = None
        self._tracked_once = False
        # One connection attempt at a time, and when the next may start.
        self._connecting = threading.Lock()
        self._next_attempt = 0.0
        self._tracker = Worker("near-cache-tracking", self._track_forever)
        self._wake = threading.Event()

    @property
    def enabled(self) -> bool:
        return bool(user_cache_settings.NEAR_CACHE_SIZE)

    def stamp(self) -> int | None:
        """Taken before a Redis read or fill whose result may be kept; None while the
        near cache is off or not tracking."""
        if not self.enabled:
            return None
        self._ensure_tracker()
        with self._lock:
            return self._sequence if self._tracking is not None else None

    def get_many(self, entry_keys: Iterable[str]) -> dict[str, Entry]:
        """The entries held for these keys, after applying every invalidation already
        received; empty while not tracking."""
        if not self.enabled:
            return {}
        self._ensure_tracker()
        found = {}
        now = time.monotonic()
        entries = self._entries
        with self._lock:
            if not self._drain():
                return {}
            for key in entry_keys:
                held = entries.get(key)
                if held is None:
                    continue
                if held[1] < now:
                    del entries[key]
                    continue
                entries.move_to_end(key)
                found[key] = held[0]
        if found:
            _HITS.inc(len(found))
        return found

    def peek(self, entry_keys: Iterable[str]) -> dict[str, Entry] | None:
        """The entries held for these keys, as ``get_many`` would serve them, for an
        operator's view: no lookup counted, no recency changed. None when a read
        now would not be served from here (off, not tracking, or a tracking
        connection in another thread's hands)."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            if not self._drain():
                return None
            found = {}
            for key in entry_keys:
                held = self._entries.get(key)
                if held is not None and held[1] >= now:
                    found[key] = held[0]
            return found

    def put_many(self, entries: dict[str, Entry], stamp: int | None) -> None:
        """Keeps entries read from Redis, or filled by this process, after ``stamp``,
        unless one of their keys was invalidated since (or tracking failed)."""
        if stamp is None or not entries:
            return
        now, wall = time.monotonic(), time.time()
        with self._lock:
            if not self._drain() or stamp < self._pruned_up_to:
                return
            if not self._tracking.covers(entries):
                self._lose_tracking("a cluster primary is not tracked")
                return
            for key, entry in entries.items():
                if self._invalidated.get(key, -1) > stamp:
                    continue
                held_for = min(user_cache_settings.NEAR_CACHE_MAX_AGE, int(entry[EXPIRES]) - wall)
                self._entries[key] = (entry, now + held_for)
                self._entries.move_to_end(key)
            evicted = 0
            while len(self._entries) > user_cache_settings.NEAR_CACHE_SIZE:
                self._entries.popitem(last=False)
                evicted += 1
            metrics.NEAR_CACHE_SIZE.set(len(self._entries))
        if evicted:
            metrics.NEAR_CACHE_EVICTIONS.inc(evicted)

    def fill(
        self, source: str, calls: Sequence[tuple[list, list]], ttls_ms: dict[str, int]
    ) -> list | None:
        """Runs a fill's script calls on the tracking connections, so that Redis sends
        this process no invalidation of its own fill (``ttls_ms``: each entry's TTL;
        ``users.cache.tracking``); None when not tracking (or tracking failed on the
        way: the caller sends the calls the usual way; a fill sent twice under one
        lease stores the same row again at most, since a write in between takes
        the lease or deletes it, and the second is refused)."""
        tracking = self._tracking
        if tracking is None:
            return None
        touch = {key: ms + 1 for key, ms in ttls_ms.items()}
        try:
            return tracking.run_scripts(source, calls, then_touch=touch)
        except TrackingLost as exc:
            with self._lock:
                if self._tracking is tracking:
                    self._lose_tracking(exc)
            return None

    def invalidate(self, entry_keys: Iterable[str]) -> None:
        """Drops keys this process changes, around its write."""
        with self._lock:
            self._apply(entry_keys)

    def count_miss(self, count: int) -> None:
        if self.enabled and count:
            _MISSES.inc(count)

    # Tracking.

    def _apply(self, entry_keys: Iterable[str] | None) -> None:
        """An invalidation: of these keys, or of everything (None: a FLUSHDB, a lost
        connection). Call with the lock held."""
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

    def _drain(self, *, wait: bool = False) -> bool:
        """Applies every invalidation already received (no waiting for data: only what
        the sockets hold); False when that cannot be known now (a connection in
        another thread's hands, without ``wait``) or tracking is down or failed (the
        near cache is then emptied). Call with the lock held."""
        if self._tracking is None:
            return False
        try:
            self._tracking.collect(wait=wait)
        except TrackingBusy:
            self._apply_pushes()
            return False
        except TrackingLost as exc:
            self._lose_tracking(exc)
            return False
        return self._apply_pushes()

    def _apply_pushes(self) -> bool:
        """Applies the pushes collected so far. A push that cannot be applied ends
        tracking: an invalidation must not be lost. Call with the lock held."""
        try:
            for names in self._tracking.take_pushes():
                self._apply(None if names is None else _held_shapes(names))
        except Exception as exc:
            self._lose_tracking(f"an invalidation could not be applied: {exc!r}")
            return False
        return True

    def _lose_tracking(self, reason: object) -> None:
        logger.warning("near cache emptied: tracking lost (%s)", reason)
        self._tracking.close()
        self._tracking = None
        self._apply(None)
        self._wake.set()

    def _ensure_tracker(self) -> None:
        """Starts the thread that keeps tracking up; the very first connection is made
        on the reading thread (one round trip per primary), so that a process's first
        reads are already tracked. Never waits: another thread connecting, or Redis
        not answering, leaves this read to go to Redis as if the near cache were off."""
        self._tracker.ensure()
        if not self._tracked_once and time.monotonic() >= self._next_attempt:
            self._connect()


near = NearCache()


def _held_shapes(names: list[bytes]) -> list[str]:
    """The pushed key names that could name an entry this cache holds: an entry key
    of a kind it holds, no longer than such a key can be. The others need no
    record, and keeping them would let anyone who can write a key under the
    tracked prefixes grow every process's memory with long names (the record
    keeps up to 2 x NEAR_CACHE_SIZE)."""
    # The longest tag is a token's: an HMAC-SHA256 in hex, in braces.
    longest = max(map(len, kinds.tracked_prefixes()), default=0) + 66
    held = []
    for name in names:
        if len(name) <= longest:
            key = name.decode(errors="replace")
            kind = kinds.kind_of_key(key)
            if kind is not None and kind.near:
                held.append(key)
    return held


@receiver(setting_changed)
def _forget_on_new_settings(*, setting: str, **kwargs) -> None:
    """A changed CACHES names another Redis; a changed USERS_CACHE may name another
    prefix or size."""
    if setting in ("CACHES", "USERS_CACHE"):
        near.forget()


# A kind registered or removed changes the prefixes to track.
kinds.on_change(near.forget)
