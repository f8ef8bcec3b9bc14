"""The login limits' counting, and what operators see of it and lift.

Counters live in Redis (``users.cache.counters.events_counted``: one Lua call
per counter, a hash with the count, when its window began, when it went over
its limit, and what it counts), never in Django's cache. An attempt costs two
round trips before its password is hashed, the address's counters first, then
the account's (an address over its limits adds no counter for the names it
makes up), and one after it.

While Redis does not answer (down, paused, slow past its timeout, or full and
refusing writes), each process counts what Redis does not take in its own
memory (``ProcessCounters``), in the same windows, and judges by the sum of
both: the limits hold per process meanwhile, what Redis held before it filled
up still counts, and so does what the process counted, after Redis is back,
until its window ends. Operators' lists and unlocks need Redis.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import functools
import math
import re
import threading
import time
from collections.abc import Sequence

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .. import identity, metrics
from ..cache import counters
from ..cache.counters import EventCount, EventRecord, EventWindow
from ..cache.keys import LoginCounter, login_key, login_key_parts, login_lockouts_key
from ..cache.transport import CacheUnavailable
from . import addresses
from .accounts import account_key

ACCOUNT, ADDRESS = "account", "address"
_KIND = {
    LoginCounter.ACCOUNT_FAILURES: (ACCOUNT, "failures"),
    LoginCounter.ACCOUNT_ATTEMPTS: (ACCOUNT, "attempts"),
    LoginCounter.ADDRESS_FAILURES: (ADDRESS, "failures"),
    LoginCounter.ADDRESS_ATTEMPTS: (ADDRESS, "attempts"),
}
# The name as typed is kept beside an account's counters for operators, up to this.
NAME_KEPT = 64
# What a process keeps while Redis does not take its counts; past it, the least
# recently used counters are forgotten.
PROCESS_COUNTERS_MAX = 10_000
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
            (_key(kind, "failures", subject), None, ""),
            (_key(kind, "attempts", subject), attempts, shown),
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
            (_key(ACCOUNT, "failures", attempt.account), failures, attempt.name[:NAME_KEPT]),
            (_key(ADDRESS, "failures", attempt.address), failures, attempt.address),
        ]
    )


def attempt_succeeded(attempt: Attempt) -> None:
    """Clears the account's own failures: never the address's, which would let an
    address guess at another account between logins to its own, and never a
    count of attempts."""
    assert attempt.account is not None and attempt.refusal is None, "a refused attempt succeeded"
    key = _key(ACCOUNT, "failures", attempt.account)
    process_counters.take(key)
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
    kind, counted = _KIND[counter]
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


def _key(kind: str, counted: str, subject: str) -> str:
    return login_key(LoginCounter(f"{kind}-{counted}"), subject)


def _seconds_left(count: EventCount, window: EventWindow) -> int:
    ms_left = count.ms_left if 0 < count.ms_left <= window.window_ms else window.window_ms
    return max(1, math.ceil(ms_left / 1000))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _counted(counts: Sequence[tuple[str, EventWindow | None, str]]) -> list[EventCount]:
    """``counters.events_counted`` on Redis's counts plus the process's own: what
    Redis does not take (it does not answer, or is full) is counted here. A
    counter Redis takes to its limit is noted for the operators' list."""
    now_ms = _now_ms()
    try:
        in_redis = counters.events_counted(counts, now_ms=now_ms)
    except CacheUnavailable:
        in_redis = [EventCount(0, -2)] * len(counts)
    totals, reached = [], []
    for (key, window, subject), there in zip(counts, in_redis, strict=True):
        if window is not None and not there.counted:
            here = process_counters.count(key, window, subject, now_ms)
        else:
            here = process_counters.peek(key)
        if window is not None and there.counted and there.count == window.limit:
            reached.append(key)
        totals.append(EventCount(there.count + here.count, max(there.ms_left, here.ms_left), True))
    if reached:
        with contextlib.suppress(CacheUnavailable):
            counters.events_index_add(
                login_lockouts_key(now_ms // 60_000), reached, ttl_ms=_listed_for_ms()
            )
    return totals


def _listed_for_ms() -> int:
    """How long the index of a minute's lockouts is kept: past the end of any
    lockout that began in it, which a failure counted in a race could extend."""
    longest = max(
        failure_window().window_ms, attempt_window(ACCOUNT).window_ms,
        attempt_window(ADDRESS).window_ms,
    )  # fmt: skip
    return 2 * longest + 60_000


class ProcessCounters:
    """Event windows in this process's memory, counted as ``scripts.EVENT_WINDOW``
    counts them in Redis, for the events Redis did not take; at most
    ``PROCESS_COUNTERS_MAX``, the least recently used forgotten first."""

    def __init__(self, max_counters: int = PROCESS_COUNTERS_MAX) -> None:
        self._max = max_counters
        self._lock = threading.Lock()
        self._windows: collections.OrderedDict[str, _Held] = collections.OrderedDict()

    def count(self, key: str, window: EventWindow, subject: str, now_ms: int) -> EventCount:
        now = time.monotonic()
        with self._lock:
            held = self._live(key, now)
            if held is None:
                held = self._windows[key] = _Held(since_ms=now_ms, subject=subject)
                while len(self._windows) > self._max:
                    self._windows.popitem(last=False)
            held.count += 1
            if held.count == 1 or window.sliding:
                held.end = now + window.window_ms / 1000
            if held.count == window.limit:
                held.over_ms = now_ms
            return EventCount(held.count, held.ms_left(now), counted=True)

    def peek(self, key: str) -> EventCount:
        now = time.monotonic()
        with self._lock:
            held = self._live(key, now)
            return EventCount(0, -2) if held is None else EventCount(held.count, held.ms_left(now))

    def take(self, key: str) -> EventRecord | None:
        now = time.monotonic()
        with self._lock:
            held = self._live(key, now)
            self._windows.pop(key, None)
        if held is None:
            return None
        return EventRecord(held.count, held.ms_left(now), held.since_ms, held.over_ms, held.subject)

    def _live(self, key: str, now: float) -> _Held | None:
        held = self._windows.get(key)
        if held is not None and held.end <= now:
            del self._windows[key]
            return None
        if held is not None:
            self._windows.move_to_end(key)
        return held


@dataclasses.dataclass(slots=True)
class _Held:
    """A window a process holds: as the script's hash, with its end on the monotonic clock."""

    since_ms: int
    subject: str
    count: int = 0
    over_ms: int | None = None
    end: float = 0.0

    def ms_left(self, now: float) -> int:
        return round((self.end - now) * 1000)


process_counters = ProcessCounters()


# Operators


@dataclasses.dataclass(frozen=True, slots=True)
class Lockout:
    """A counter at or over its limit, or one an operator removed."""

    kind: str  # ACCOUNT or ADDRESS
    subject: str  # what unlock takes: the account's digest, or the address group
    shown: str  # the name as first typed (escaped), or the address group
    counted: str  # "failures" or "attempts"
    count: int
    since: datetime.datetime  # when it reached its limit (its first event, if below it)
    until: datetime.datetime | None  # when it ends; None: it has no expiry

    def describe(self) -> str:
        until = "never" if self.until is None else _when(self.until)
        return (
            f"{self.kind} {self.shown}: {self.count} {self.counted}"
            f" since {_when(self.since)} until {until}"
        )


def lockouts() -> list[Lockout]:
    """Every counter in Redis at or over its limit, the soonest to end first: those
    the index of each minute noted, as far back as a lockout can last."""
    minute = _now_ms() // 60_000
    minutes = range(minute - _listed_for_ms() // 60_000, minute + 1)
    keys = counters.events_indexed([login_lockouts_key(m) for m in minutes])
    found = []
    for key, record in zip(keys, counters.event_records(keys), strict=True):
        parts = login_key_parts(key)
        if record is not None and parts is not None and record.count >= limit_of(parts[0]):
            found.append(_lockout(parts, record))
    return sorted(found, key=lambda found: (found.until is None, found.until or found.since))


def unlock(*, kind: str, subject: str) -> list[Lockout]:
    """Removes the counters of an account (by its digest) or an address group, in
    Redis and in this process; returns what Redis held."""
    keys = [_key(kind, counted, subject) for counted in ("failures", "attempts")]
    for key in keys:
        process_counters.take(key)
    removed = counters.event_records(keys, take=True)
    return [
        _lockout(login_key_parts(key), record)
        for key, record in zip(keys, removed, strict=True)
        if record is not None
    ]


def unlock_account(name: str) -> tuple[str, list[Lockout]]:
    """Unlocks the account ``name`` spells, any way the login form takes it; returns
    the name as shown and what was removed."""
    name = identity.normalize_username(name.strip())
    return _escaped(name), unlock(kind=ACCOUNT, subject=account_key(name))


def unlock_address(text: str) -> tuple[str, list[Lockout]]:
    """Unlocks the group of the address ``text`` names (``addresses.named_group``)."""
    group = addresses.named_group(text)
    return group, unlock(kind=ADDRESS, subject=group)


def _lockout(parts: tuple[LoginCounter, str], record: EventRecord) -> Lockout:
    kind, counted = _KIND[parts[0]]
    since_ms = record.over_ms if record.over_ms is not None else record.since_ms
    return Lockout(
        kind=kind,
        subject=parts[1],
        shown=_escaped(record.subject) if kind == ACCOUNT else parts[1],
        counted=counted,
        count=record.count,
        since=_datetime(since_ms),
        until=None if record.ms_left < 0 else _datetime(_now_ms() + record.ms_left),
    )


def _escaped(name: str) -> str:
    """A name as typed, quoted, with every character that does not print (zero width
    spaces, soft hyphens, controls) spelt out, so look-alikes look different."""
    spelt = "".join(
        char if char.isprintable() else f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF
        else f"\\U{ord(char):08x}"
        for char in name
    )  # fmt: skip
    return f"'{spelt}'"


def _datetime(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def _when(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
