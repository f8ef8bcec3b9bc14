"""Operator work on the user cache, in bulk: warm it (``warm``), flush it
(``flush``), audit and repair it (``check``), and what the admin shows of it
(``overview``). The management commands and the admin's actions are thin
wrappers around these.

Filling goes through ``users.reads``' read-through, so a bulk run follows the
read path's rules: an entry is filled only while its filler holds the entry's
lease, taken before the MySQL load, and every write deletes or takes the lease;
a bulk fill beside live traffic can never store a state older than a
concurrent write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from ..cache.transport import CacheUnavailable
from ..conf import user_cache_settings

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
