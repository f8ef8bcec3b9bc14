"""The near cache's upkeep (``users.cache.near``): what its own thread does, and
what changes where it tracks. Nothing here runs on a read that the near cache
answers.

The thread reconnects tracking when it is down and otherwise checks the
connections every second; ``forget`` drops tracking when the settings or the
registry change, so that the next read tracks what they now name.
"""

from __future__ import annotations

import logging
import time

from .. import metrics
from ..conf import user_cache_settings
from . import kinds
from .tracking import Tracking, TrackingLost

# The near cache's lines, under its name, wherever their code lives.
logger = logging.getLogger("users.cache.near")

# How often the tracker checks its connections (a PING), and reconnects when down.
_CHECK_EVERY_S = 1.0


class Upkeep:
    """``NearCache``'s thread and reconnection, over its state (its lock, its
    tracking connections and the bookkeeping ``_apply`` keeps)."""

    def _track_forever(self) -> None:
        """Reconnects when tracking is down (every ``OUTBOX_RETRY_MS``), and otherwise
        checks the connections every second: collects what they hold, so that a quiet
        process does not let invalidations pile up, and PINGs them, without waiting
        for the answer (the next check wants it: a connection that answers nothing in
        a second is lost). No network wait happens under the lock readers take."""
        while True:
            # First a pause: the thread starts on a read, which connects by itself.
            down = self._tracking is None and self.enabled
            self._wake.wait(user_cache_settings.OUTBOX_RETRY_MS / 1000 if down else _CHECK_EVERY_S)
            self._wake.clear()
            tracking = self._tracking
            if not self.enabled:
                self.forget()
            elif tracking is None:
                self._connect()
            else:
                self._check(tracking)

    def _check(self, tracking: Tracking) -> None:
        try:
            tracking.collect(wait=True)
            tracking.ping()
        except TrackingLost as exc:
            with self._lock:
                if self._tracking is tracking:
                    self._lose_tracking(exc)
            return
        with self._lock:
            if self._tracking is tracking:
                self._apply_pushes()

    def forget(self) -> None:
        """Empties the near cache and drops tracking; it reconnects to whatever Redis
        and prefixes the settings and the registry name now."""
        with self._lock:
            if self._tracking is not None:
                self._lose_tracking("the cache settings changed")
            self._tracked_once = False
            self._next_attempt = 0.0

    def _connect(self) -> None:
        """Opens tracking without the lock; then, under it, the near cache starts
        empty on the new connections."""
        if not self._connecting.acquire(blocking=False):
            return
        try:
            self._next_attempt = time.monotonic() + user_cache_settings.OUTBOX_RETRY_MS / 1000
            tracking = Tracking.open(kinds.tracked_prefixes())
            if tracking is None:
                return
            with self._lock:
                if self._tracking is not None:  # another thread connected meanwhile
                    tracking.close()
                    return
                self._apply(None)
                self._tracking, self._tracked_once = tracking, True
        finally:
            self._connecting.release()
        metrics.NEAR_CACHE_TRACKING_CONNECTS.inc()
        logger.info("near cache tracking up on %d connection(s)", len(tracking))
