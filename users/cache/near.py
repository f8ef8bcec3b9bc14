"""The near cache: a bounded in-process LRU of entries read from Redis, kept coherent
by Redis itself.

Each process holds one tracking connection per Redis primary
(``users/cache/tracking.py``), on which it asked for ``CLIENT TRACKING ON BCAST``
over the prefixes of user and token entries: Redis then pushes the name of every
such key anyone changes, deletes or lets expire, and the process drops it.
Three rules make that enough:

* **Drained before served.** Every read of the near cache first applies every
  invalidation already on the tracking connections (a poll of their sockets, no
  round trip). Redis sends a write's invalidation in the same pass of its event
  loop as the writer's answer; by the time the writer has acknowledged its
  request and a client has asked this process, the message has normally arrived
  (docs/near-cache.md gives the cases where it has not, and their bounds).
* **Stored only if not invalidated since.** A value read from Redis is kept only
  if no invalidation of its key was applied after the read began (a stamp taken
  before it): an invalidation that overtakes the reply cannot be lost.
* **Nothing without tracking.** Until tracking is up, and from the moment a
  tracking connection fails, or answers no PING for a second (a restart, a
  failover, a network error), the near cache is emptied and every read goes to
  Redis, until tracking is back.

Entries also leave after ``NEAR_CACHE_MAX_AGE`` seconds (an absence after
``NEGATIVE_TTL``), counted from when they were read, however quiet Redis is,
and when the cache is full (least recently used first). No network wait happens
under the lock that reads take: connecting and checking are a thread's
(``near-cache-tracking``).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterable

from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import metrics
from ..conf import user_cache_settings
from ..entries import Entry, is_absent
from . import keys
from .tracking import Tracking, TrackingLost

logger = logging.getLogger(__name__)

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
        self._tracking: Tracking | None = None
        self._tracked_once = False
        # Set by a push that could not be applied: the next drain ends tracking.
        self._broken: str | None = None
        # One connection attempt at a time, and when the next may start.
        self._connecting = threading.Lock()
        self._next_attempt = 0.0
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    @property
    def enabled(self) -> bool:
        return bool(user_cache_settings.NEAR_CACHE_SIZE)

    def stamp(self) -> int | None:
        """Taken before a Redis read whose result may be kept; None while the near
        cache is off or not tracking."""
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
        now = time.monotonic()
        # An absence is held no longer than Redis keeps one it is given.
        held_for = {
            key: min(
                user_cache_settings.NEAR_CACHE_MAX_AGE,
                user_cache_settings.NEGATIVE_TTL if is_absent(entry) else math.inf,
            )
            for key, entry in entries.items()
        }
        with self._lock:
            if not self._drain() or stamp < self._pruned_up_to:
                return
            size = user_cache_settings.NEAR_CACHE_SIZE
            if not self._tracking.covers(entries):
                self._lose_tracking("a cluster primary is not tracked")
                return
            for key, entry in entries.items():
                if self._invalidated.get(key, -1) > stamp:
                    continue
                self._entries[key] = (entry, now + held_for[key])
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
        """Applies every invalidation already received (no waiting: only what the
        sockets hold); False, and the near cache emptied, when tracking is down or
        failed. Call with the lock held."""
        if self._tracking is None:
            return False
        try:
            self._tracking.drain()
        except TrackingLost as exc:
            self._lose_tracking(exc)
            return False
        if self._broken is not None:
            self._lose_tracking(self._broken)
            return False
        return True

    def _on_push(self, response: list) -> list:
        """redis-py's handler for invalidation pushes: ``[b"invalidate", keys or None]``.
        redis-py logs and drops what a handler raises, so nothing may escape here: a
        push that cannot be applied marks tracking broken, and the next drain ends it."""
        try:
            names = response[1]
            self._apply(None if names is None else _held_shapes(names))
        except Exception as exc:
            self._broken = f"an invalidation could not be applied: {exc!r}"
        return response

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
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._track_forever, name="near-cache-tracking", daemon=True
                    )
                    self._thread.start()
        if not self._tracked_once and time.monotonic() >= self._next_attempt:
            self._connect()

    def _track_forever(self) -> None:
        """Reconnects when tracking is down (every ``OUTBOX_RETRY_MS``), and otherwise
        checks the connections every second: drains them, so that a quiet process does
        not let invalidations pile up, and PINGs them, without waiting for the answer
        (the next check wants it: a connection that answers nothing in a second is
        lost). No network wait happens under the lock readers take."""
        while True:
            # First a pause: the thread starts on a read, which connects by itself.
            down = self._tracking is None and self.enabled
            self._wake.wait(user_cache_settings.OUTBOX_RETRY_MS / 1000 if down else _CHECK_EVERY_S)
            self._wake.clear()
            if not self.enabled:
                self.forget()
            elif self._tracking is None:
                self._connect()
            else:
                with self._lock:
                    self._check()

    def forget(self) -> None:
        """Empties the near cache and drops tracking; it reconnects to whatever Redis
        and prefix the settings name now."""
        with self._lock:
            if self._tracking is not None:
                self._lose_tracking("the cache settings changed")
            self._tracked_once = False
            self._next_attempt = 0.0

    def _check(self) -> None:
        if not self._drain():
            return
        try:
            self._tracking.ping()
        except TrackingLost as exc:
            self._lose_tracking(exc)

    def _connect(self) -> None:
        """Opens tracking without the lock; then, under it, the near cache starts
        empty on the new connections."""
        if not self._connecting.acquire(blocking=False):
            return
        try:
            self._next_attempt = time.monotonic() + user_cache_settings.OUTBOX_RETRY_MS / 1000
            prefixes = [keys.user_key_prefix(), keys.token_key_prefix()]
            tracking = Tracking.open(prefixes, self._on_push)
            if tracking is None:
                return
            with self._lock:
                self._apply(None)
                self._tracking, self._broken, self._tracked_once = tracking, None, True
        finally:
            self._connecting.release()
        metrics.NEAR_CACHE_TRACKING_CONNECTS.inc()
        logger.info("near cache tracking up on %d connection(s)", len(tracking))


near = NearCache()


def _held_shapes(names: list[bytes]) -> list[str]:
    """The pushed key names that could name an entry this cache holds: a user's or a
    token's, no longer than a token's key. The others need no record, and keeping
    them would let anyone who can write a key under the tracked prefixes grow every
    process's memory with long names (the record keeps up to 2 x NEAR_CACHE_SIZE)."""
    longest = len(keys.token_key("0" * 64))  # a token's name: an HMAC-SHA256 in hex
    held = []
    for name in names:
        if len(name) <= longest:
            key = name.decode(errors="replace")
            if keys.key_kind(key) in (keys.KeyKind.USER, keys.KeyKind.TOKEN):
                held.append(key)
    return held


@receiver(setting_changed)
def _forget_on_new_settings(*, setting: str, **kwargs) -> None:
    """A changed CACHES names another Redis; a changed USERS_CACHE may name another
    prefix or size."""
    if setting in ("CACHES", "USERS_CACHE"):
        near.forget()
