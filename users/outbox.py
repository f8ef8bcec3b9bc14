"""The invalidation outbox: cache invalidations that survive a Redis outage or a crash.

Every write records the Redis keys it affects in ``CacheInvalidation``, inside
its own transaction. After the commit, ``complete`` applies the cache change
and deletes the row. When Redis does not answer, the row stays, and:

* this process replays it before serving its next cached read
  (``before_cached_read``), so a writer never reads its own stale entry;
* a background thread retries every ``OUTBOX_RETRY_MS`` until Redis answers, so
  other processes stop seeing the stale entry within about the breaker's
  cooldown plus one retry after Redis returns;
* every process also sweeps the table every ``OUTBOX_SWEEP_SECONDS`` for rows
  older than that, which replays rows left by a process that died between its
  commit and its invalidation (younger rows belong to writes still applying).

Replaying is idempotent: deleting a key twice is harmless.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable

from django.db import DatabaseError, connection
from django.utils import timezone

from . import cache
from .conf import user_cache_settings
from .models import CacheInvalidation

logger = logging.getLogger(__name__)

_BATCH = 500
# Set while this process holds an invalidation Redis missed. Each miss also bumps
# _deferrals, so a replay clears the flag only if no miss came in during it.
_pending = threading.Event()
_deferrals = 0
_state_lock = threading.Lock()
_replay_lock = threading.Lock()
# Wakes the background thread to look again at what is due.
_wake = threading.Event()
# When the background thread next retries a pending replay (time.monotonic()).
_retry_at = 0.0
_drainer_lock = threading.Lock()
_drainer: threading.Thread | None = None


def record(keys: list[str]) -> int:
    """Records the keys a write affects; call inside the write's transaction."""
    return CacheInvalidation.objects.create(keys=keys).pk


def complete(entry_id: int, apply: Callable[[], None]) -> None:
    """After commit: applies the cache change, then forgets the entry.

    Never raises: the write has committed and must be acknowledged. What could
    not be done is left in the table for replay.
    """
    try:
        apply()
    except cache.CacheUnavailable as exc:
        logger.warning("cache change deferred to the outbox (entry %s): %s", entry_id, exc)
        _defer()
        _ensure_drainer()
        return
    try:
        CacheInvalidation.objects.filter(pk=entry_id).delete()
    except DatabaseError as exc:
        logger.warning("outbox entry %s left for replay: %s", entry_id, exc)


def replay(*, older_than_seconds: float = 0.0) -> int:
    """Invalidates recorded entries' keys and deletes the entries.

    With ``older_than_seconds`` (the periodic sweep), only entries at least that
    old: a younger one most likely belongs to a write whose process is applying
    it right now. Returns how many entries were replayed; raises
    ``CacheUnavailable`` when Redis does not answer (the entries stay).
    """
    entries = CacheInvalidation.objects.order_by("id")
    if older_than_seconds:
        cutoff = timezone.now() - datetime.timedelta(seconds=older_than_seconds)
        entries = entries.filter(created_at__lte=cutoff)
    with _replay_lock:
        deferrals_before = _deferrals
        replayed = 0
        while batch := list(entries.values_list("id", "keys")[:_BATCH]):
            cache.invalidate(key for _, keys in batch for key in keys)
            entry_ids = [entry_id for entry_id, _ in batch]
            CacheInvalidation.objects.filter(id__in=entry_ids).delete()
            replayed += len(batch)
        with _state_lock:
            if not older_than_seconds and _deferrals == deferrals_before:
                _pending.clear()
    if replayed:
        logger.info("replayed %d outbox entries", replayed)
    return replayed


def has_pending() -> bool:
    return _pending.is_set()


def _defer() -> None:
    """Marks an invalidation Redis missed. The failure was itself an attempt, so the
    background thread retries one ``OUTBOX_RETRY_MS`` later, not at once."""
    global _deferrals
    _schedule_retry()
    with _state_lock:
        _deferrals += 1
        _pending.set()
    _wake.set()


def before_cached_read() -> None:
    """Replays this process's missed invalidations before it trusts the cache.

    Costs one attribute check when nothing is pending. Raises
    ``CacheUnavailable`` while Redis is still away, so the read bypasses the cache.
    """
    if _drainer is None and user_cache_settings.OUTBOX_SWEEP_SECONDS:
        _ensure_drainer()
    if _pending.is_set():
        replay()


def _ensure_drainer() -> None:
    global _drainer
    with _drainer_lock:
        if _drainer is None or not _drainer.is_alive():
            _drainer = threading.Thread(target=_drain_forever, name="cache-outbox", daemon=True)
            _drainer.start()


def _drain_forever() -> None:
    next_sweep = time.monotonic()
    while True:
        sweep_every = user_cache_settings.OUTBOX_SWEEP_SECONDS
        now = time.monotonic()
        sweep_due = bool(sweep_every) and now >= next_sweep
        retry_due = _pending.is_set() and now >= _retry_at
        if retry_due or sweep_due:
            try:
                replay(older_than_seconds=0.0 if retry_due else sweep_every)
                if sweep_due:
                    next_sweep = time.monotonic() + sweep_every
                continue
            except (cache.CacheUnavailable, DatabaseError) as exc:
                logger.debug("outbox replay failed, retrying: %s", exc)
            except Exception:
                # Anything else is a bug, but the thread must outlive it: it is
                # the only one that replays for this process.
                logger.exception("outbox replay crashed, retrying")
            finally:
                connection.close()
            _schedule_retry()
        _wake.wait(timeout=_next_wake_in(next_sweep if sweep_every else None))
        _wake.clear()


def _schedule_retry() -> None:
    global _retry_at
    _retry_at = time.monotonic() + user_cache_settings.OUTBOX_RETRY_MS / 1000


def _next_wake_in(next_sweep: float | None) -> float | None:
    """Seconds until the next sweep or retry is due, or None for neither."""
    moments = [
        moment for moment in (next_sweep, _retry_at if _pending.is_set() else None) if moment
    ]
    return max(0.0, min(moments) - time.monotonic()) if moments else None
