"""The login limits' counting, on the login path: whether an attempt may go on to
the hash, and the failures and successes it is followed by. What operators see
and lift is ``lockouts``'; the process's own counts, ``memory``'s.

Counters live in Redis (``users.cache.counters.events_counted``: one Lua call
per counter, a hash with the count, when its window began, when it went over
its limit, and what it counts), never in Django's cache. An attempt costs two
round trips before its password is hashed, the address's counters first, then
the account's (an address over its limits adds no counter for the names it
makes up), and one after it.

While Redis does not answer (down, paused, slow past its timeout, or full and
refusing writes), each process counts what Redis does not take in its own
memory (``memory.ProcessCounters``), in the same windows, and judges by the sum of
both: the limits hold per process meanwhile, what Redis held before it filled
up still counts, and so does what the process counted, after Redis is back,
until its window ends. Operators' lists and unlocks need Redis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import time
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .. import metrics
from ..cache import counters
from ..cache.counters import EventCount, EventWindow
from ..cache.keys import LoginCounter, login_key, login_lockouts_key
from ..cache.transport import CacheUnavailable
from . import addresses, memory
from .accounts import account_key

ACCOUNT, ADDRESS = "account", "address"
COUNTER_KINDS = {
    LoginCounter.ACCOUNT_FAILURES: (ACCOUNT, "failures"),
    LoginCounter.ACCOUNT_ATTEMPTS: (ACCOUNT, "attempts"),
    LoginCounter.ADDRESS_FAILURES: (ADDRESS, "failures"),
    LoginCounter.ADDRESS_ATTEMPTS: (ADDRESS, "attempts"),
}
# The name as typed is kept beside an account's counters for operators, up to this.
NAME_KEPT = 64
_PERIODS = {"s": 1, "sec": 1, "min": 60, "hour": 3600, "day": 86400}


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why an attempt was refused: ``locked`` (failures) or ``rate`` (attempts)."""

    reason: str
    retry_after: int


@dataclasses.dataclass(slots=True)
class Attempt:
    """A login attempt the limits counted: whose, from where, and their verdict.
    ``account`` is None when the address was refused before the name was looked at."""

    name: str
    address: str
    account: str | None = None
    refusal: Refusal | None = None


def attempt_check(*, name: str, address: str) -> Attempt:
    """Counts an attempt to log in as ``name`` from ``address`` (a group from
    ``addresses.client_address``), and says whether it may go on to the hash."""
    attempt = Attempt(name=name, address=address)
    attempt.refusal = _refusal(ADDRESS, address, address)
    if attempt.refusal is None:
        attempt.account = account_key(name)
        attempt.refusal = _refusal(ACCOUNT, attempt.account, name[:NAME_KEPT])
    if attempt.refusal is not None:
        metrics.LOGIN_LOCKOUTS.inc()
    return attempt


def _refusal(kind: str, subject: str, shown: str) -> Refusal | None:
    """Counts an attempt against ``subject``'s rate and reads its failures."""
    failures, attempts = failure_window(), attempt_window(kind)
    failed, tried = _counted(
        [
            (counter_key(kind, "failures", subject), None, ""),
            (counter_key(kind, "attempts", subject), attempts, shown),
        ]
    )
    if failed.count >= failures.limit:
        return Refusal("locked", _seconds_left(failed, failures))
    if tried.count >= attempts.limit:
        return Refusal("rate", _seconds_left(tried, attempts))
    return None


def attempt_failed(attempt: Attempt) -> None:
    assert attempt.account is not None and attempt.refusal is None, "a refused attempt failed"
    metrics.LOGIN_FAILURES.inc()
    failures = failure_window()
    _counted(
        [
            (counter_key(ACCOUNT, "failures", attempt.account), failures, attempt.name[:NAME_KEPT]),
            (counter_key(ADDRESS, "failures", attempt.address), failures, attempt.address),
        ]
    )


def attempt_succeeded(attempt: Attempt) -> None:
    """Clears the account's own failures: never the address's, which would let an
    address guess at another account between logins to its own, and never a
    count of attempts."""
    assert attempt.account is not None and attempt.refusal is None, "a refused attempt succeeded"
    key = counter_key(ACCOUNT, "failures", attempt.account)
    memory.process_counters.take(key)
    with contextlib.suppress(CacheUnavailable):
        counters.event_records([key], take=True)


def failure_window() -> EventWindow:
    return EventWindow(
        window_ms=settings.LOGIN_LOCKOUT_MINUTES * 60_000,
        sliding=True,
        limit=settings.LOGIN_FAILURE_LIMIT,
    )


def attempt_window(kind: str) -> EventWindow:
    """The window of ``LOGIN_RATE_ACCOUNT`` or ``LOGIN_RATE_ADDRESS``: the attempt
    past the rate is over the limit."""
    setting = f"LOGIN_RATE_{kind.upper()}"
    requests, seconds = _parse_rate(setting, getattr(settings, setting))
    return EventWindow(window_ms=seconds * 1000, sliding=False, limit=requests + 1)


def limit_of(counter: LoginCounter) -> int:
    kind, counted = COUNTER_KINDS[counter]
    return failure_window().limit if counted == "failures" else attempt_window(kind).limit


def check_settings() -> None:
    """Reads every setting of the limits, raising ``ImproperlyConfigured`` for a bad one."""
    for name in ("LOGIN_FAILURE_LIMIT", "LOGIN_LOCKOUT_MINUTES"):
        value = getattr(settings, name)
        if not (isinstance(value, int) and value >= 1):
            raise ImproperlyConfigured(f"{name} is {value!r}; use a whole number of 1 or more.")
    attempt_window(ACCOUNT)
    attempt_window(ADDRESS)
    addresses.ipv6_prefix()


@functools.cache
def _parse_rate(setting: str, rate: str) -> tuple[int, int]:
    match = re.fullmatch(r"([1-9][0-9]*)/(s|sec|min|hour|day)", rate)
    if match is None:
        raise ImproperlyConfigured(
            f"{setting} is {rate!r}; use N/s, N/min, N/hour or N/day (N at least 1)."
        )
    return int(match[1]), _PERIODS[match[2]]


def counter_key(kind: str, counted: str, subject: str) -> str:
    return login_key(LoginCounter(f"{kind}-{counted}"), subject)


def _seconds_left(count: EventCount, window: EventWindow) -> int:
    ms_left = count.ms_left if 0 < count.ms_left <= window.window_ms else window.window_ms
    return max(1, math.ceil(ms_left / 1000))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _counted(counts: Sequence[tuple[str, EventWindow | None, str]]) -> list[EventCount]:
    """``counters.events_counted`` on Redis's counts plus the process's own: what
    Redis does not take (it does not answer, or is full) is counted here. A
    counter Redis takes to its limit is noted for the operators' list."""
    now = now_ms()
    try:
        in_redis = counters.events_counted(counts, now_ms=now)
    except CacheUnavailable:
        in_redis = [EventCount(0, -2)] * len(counts)
    totals, reached = [], []
    for (key, window, subject), there in zip(counts, in_redis, strict=True):
        if window is not None and not there.counted:
            here = memory.process_counters.count(key, window, subject, now)
        else:
            here = memory.process_counters.peek(key)
        if window is not None and there.counted and there.count == window.limit:
            reached.append(key)
        totals.append(EventCount(there.count + here.count, max(there.ms_left, here.ms_left), True))
    if reached:
        with contextlib.suppress(CacheUnavailable):
            counters.events_index_add(
                login_lockouts_key(now // 60_000), reached, ttl_ms=listed_for_ms()
            )
    return totals


def listed_for_ms() -> int:
    """How long the index of a minute's lockouts is kept: past the end of any
    lockout that began in it, which a failure counted in a race could extend."""
    longest = max(
        failure_window().window_ms, attempt_window(ACCOUNT).window_ms,
        attempt_window(ADDRESS).window_ms,
    )  # fmt: skip
    return 2 * longest + 60_000
