"""Retries for the operators' bulk runs (warm, flush, check)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..conf import user_cache_settings
from .transport import CacheUnavailable

T = TypeVar("T")

# Tries of one batch's step before a bulk run gives up on Redis.
REDIS_ATTEMPTS = 3


def retrying(step: Callable[[], T]) -> T:
    """Runs a batch's step again when Redis failed it, after the breaker's cooldown.

    A bulk run holds Redis to the API's short timeouts, and on a busy server one
    pipeline of a long run may miss them; each step is idempotent (a retried
    lease-and-load takes new leases and loads again; a retried fill stores under
    the same leases, which still refuse it if a write came in between), so a
    blip costs a retry rather than the run.
    """
    for attempt in range(1, REDIS_ATTEMPTS + 1):
        try:
            return step()
        except CacheUnavailable:
            if attempt == REDIS_ATTEMPTS:
                raise
            time.sleep(user_cache_settings.BREAKER_COOLDOWN_MS / 1000 * attempt)
    raise AssertionError("unreachable")
