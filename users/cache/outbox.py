"""The invalidation outbox: cache changes that survive a Redis outage or a crash.

Every write records the Redis keys it affects in ``CacheInvalidation``, inside
its own transaction (``users.invalidation``). After the commit, ``complete``
applies the cache change and deletes the row. When Redis does not answer, the
row stays, and:

* this process drops those keys before it serves its next cached read
  (``before_cached_read``), so a writer never reads its own stale entry. That
  needs Redis only: the keys are kept in memory, so a cached read never waits
  for MySQL, and answers while MySQL is away;
* a background thread replays the rows every ``OUTBOX_RETRY_MS`` until Redis
  and MySQL both answer, so other processes stop seeing the stale entry within
  one retry after Redis returns (a replay, like the write itself, asks Redis
  whatever the breaker says). It replays per node: on a cluster, what a
  healthy node is owed is replayed while another node is down, and a row keeps
  only the keys a node missed;
* every process also sweeps the table every ``OUTBOX_SWEEP_SECONDS`` for rows
  older than that, which replays rows left by a process that died between its
  commit and its invalidation (younger rows belong to writes still applying).

A change Redis took but no replica confirmed (``store.write``) is deferred the
same way: the replay sends it again until a replica has it, so a failover that
loses the primary's last writes cannot lose it.

Replaying deletes entries and leases, whatever the change was: deleting twice
is harmless, and a deleted entry is read again from MySQL.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable

from django.db import DatabaseError, connection
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from ..conf import user_cache_settings
from ..models import CacheInvalidation
from . import store
from .background import Worker
from .transport import CacheUnavailable
from .writes import Missed

logger = logging.getLogger(__name__)

_BATCH = 500


class Outbox:
    """One per process: what this process owes Redis, and the thread that pays it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Keys whose change Redis missed: dropped before this process's next cached read.
        self._keys: set[str] = set()
        # This process left rows behind; every miss bumps _deferrals, so a replay
        # clears the flag only if no miss came in while it ran.
        self._rows_left = False
        self._deferrals = 0
        self._replay_lock = threading.Lock()
        self._wake = threading.Event()
        self._retry_at = 0.0
        self._worker = Worker("cache-outbox", self._drain_forever)

    @property
    def pending(self) -> bool:
        """Whether this process holds changes Redis missed (its keys or its rows)."""
        return bool(self._keys) or self._rows_left

    def record(self, keys: list[str]) -> int:
        """Records the keys a write affects; call inside the write's transaction."""
        return CacheInvalidation.objects.create(keys=keys).pk

    def complete(self, entry_id: int, keys: list[str], apply: Callable[[], object]) -> None:
        """After commit: applies the cache change, then forgets the entry.

        Never raises: the write has committed and must be acknowledged. What could
        not be done is left for replay.
        """
        try:
            apply()
        except CacheUnavailable as exc:
            logger.warning("cache change deferred to the outbox (entry %s): %s", entry_id, exc)
            self._defer(exc.keys if isinstance(exc, Missed) else keys)
            return
        try:
            CacheInvalidation.objects.filter(pk=entry_id).delete()
        except DatabaseError as exc:
            logger.warning("outbox entry %s left for replay: %s", entry_id, exc)

    def before_cached_read(self) -> None:
        """Drops the keys this process's writes could not reach Redis with, before it
        trusts the cache. Costs one check when nothing is pending. Raises
        ``CacheUnavailable`` while Redis is still away, so the read bypasses it."""
        if not self._worker.started and user_cache_settings.OUTBOX_SWEEP_SECONDS:
            self._worker.ensure()
        if not self._keys:
            return
        with self._lock:
            keys = set(self._keys)
        try:
            store.invalidate(keys)
        except Missed as exc:
            with self._lock:
                self._keys -= keys - set(exc.keys)
            raise
        with self._lock:
            self._keys -= keys

    def replay(self, *, older_than_seconds: float = 0.0) -> int:
        """Invalidates recorded entries' keys and deletes the entries.

        With ``older_than_seconds`` (the periodic sweep), only entries at least that
        old: a younger one most likely belongs to a write whose process is applying
        it right now. Each node takes what it owes whatever the others do: an entry
        whose keys all reached Redis is deleted, one with keys a node missed keeps
        those only. Returns how many entries were replayed whole; raises
        ``CacheUnavailable`` when a node did not take its keys, or ``DatabaseError``
        when MySQL does not answer (what was not replayed stays).
        """
        entries = CacheInvalidation.objects.order_by("id")
        if older_than_seconds:
            cutoff = timezone.now() - datetime.timedelta(seconds=older_than_seconds)
            entries = entries.filter(created_at__lte=cutoff)
        with self._replay_lock:
            deferrals_before = self._deferrals
            replayed, missed, last_id, reasons = 0, set(), 0, ""
            while batch := list(entries.filter(id__gt=last_id).values_list("id", "keys")[:_BATCH]):
                last_id = batch[-1][0]
                try:
                    store.write([key for _, keys in batch for key in keys])
                    batch_missed = set()
                except Missed as exc:
                    batch_missed, reasons = set(exc.keys), str(exc)
                done = [entry_id for entry_id, keys in batch if batch_missed.isdisjoint(keys)]
                CacheInvalidation.objects.filter(id__in=done).delete()
                for entry_id, keys in batch:
                    if entry_id not in done:
                        left = [key for key in keys if key in batch_missed]
                        CacheInvalidation.objects.filter(id=entry_id).update(keys=left)
                replayed += len(done)
                missed |= batch_missed
            with self._lock:
                if not older_than_seconds and self._deferrals == deferrals_before:
                    self._rows_left = bool(missed)
                    self._keys &= missed
        if replayed:
            logger.info("replayed %d outbox entries", replayed)
        if missed:
            raise CacheUnavailable(f"{len(missed)} key(s) left in the outbox: {reasons}")
        return replayed

    def _defer(self, keys: Iterable[str]) -> None:
        """Remembers a change Redis missed. The failure was itself an attempt, so the
        thread retries one ``OUTBOX_RETRY_MS`` later, not at once."""
        self._schedule_retry()
        with self._lock:
            self._keys.update(keys)
            self._rows_left = True
            self._deferrals += 1
        self._worker.ensure()
        self._wake.set()

    def _drain_forever(self) -> None:
        next_sweep = time.monotonic()
        while True:
            sweep_every = user_cache_settings.OUTBOX_SWEEP_SECONDS
            now = time.monotonic()
            sweep_due = bool(sweep_every) and now >= next_sweep
            retry_due = self._rows_left and now >= self._retry_at
            if retry_due or sweep_due:
                try:
                    self.replay(older_than_seconds=0.0 if retry_due else sweep_every)
                    if sweep_due:
                        next_sweep = time.monotonic() + sweep_every
                    continue
                except (CacheUnavailable, DatabaseError) as exc:
                    logger.debug("outbox replay failed, retrying: %s", exc)
                except Exception:
                    # Anything else is a bug, but the thread must outlive it: it is
                    # the only one that replays for this process.
                    logger.exception("outbox replay crashed, retrying")
                finally:
                    connection.close()
                self._schedule_retry()
                if sweep_due:
                    # A failed sweep is tried again as a retry is, not at once.
                    next_sweep = self._retry_at
            self._wake.wait(timeout=self._next_wake_in(next_sweep if sweep_every else None))
            self._wake.clear()

    def _schedule_retry(self) -> None:
        self._retry_at = time.monotonic() + user_cache_settings.OUTBOX_RETRY_MS / 1000

    def _next_wake_in(self, next_sweep: float | None) -> float | None:
        """Seconds until the next sweep or retry is due, or None for neither."""
        retry = self._retry_at if self._rows_left else None
        moments = [moment for moment in (next_sweep, retry) if moment]
        return max(0.0, min(moments) - time.monotonic()) if moments else None


outbox = Outbox()


class BacklogCollector:
    """The outbox's backlog for ``/metrics``, read from MySQL when scraped (one
    aggregate query, over a table that holds only what Redis missed). It is the
    table's, not the process's: every instance reports the same. Nothing when
    MySQL does not answer, rather than a failed scrape."""

    def collect(self):
        try:
            backlog = CacheInvalidation.objects.aggregate(
                rows=Count("id"), oldest=Min("created_at")
            )
        except DatabaseError as exc:
            logger.warning("outbox backlog not read for /metrics: %s", exc)
            return
        oldest = backlog["oldest"]
        age = max((timezone.now() - oldest).total_seconds(), 0.0) if oldest else 0.0
        yield GaugeMetricFamily(
            "usersvc_outbox_backlog",
            "Cache invalidations that Redis missed and that wait in the outbox table for "
            "their replay.",
            value=backlog["rows"],
        )
        yield GaugeMetricFamily(
            "usersvc_outbox_oldest_age_seconds",
            "Age of the oldest row in the outbox table, 0 when it is empty: for that long, "
            "processes other than the writer's may have read an entry a write changed.",
            value=age,
        )
