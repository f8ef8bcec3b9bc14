"""Rate-limit windows, counted in Redis (the throttles; the token lookup counts its
request in the same round trip as it reads the token: ``store.read_many``), in
process for requests the near cache answers (``LocalWindows``); and the event
windows of the login limits, which keep what an operator lists beside the count."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

from redis import Redis
from redis.cluster import RedisCluster

from ..conf import user_cache_settings
from . import scripts
from .background import Worker
from .cluster import eval_many
from .transport import CacheUnavailable, call, decode_hash, run_script


@dataclasses.dataclass(frozen=True, slots=True)
class WindowCount:
    """A request counted against a rate limit: requests so far in the window, and
    the milliseconds left in it."""

    count: int
    ms_left: int


def count_in_window(key: str, window_ms: int, cost: int = 1) -> WindowCount:
    """Counts one request, of ``cost`` units, against a rate limit."""
    count, ms_left = run_script(scripts.COUNT_IN_WINDOW, [key], [window_ms, cost])[:2]
    return WindowCount(count, ms_left)


def window_count(key: str) -> WindowCount:
    """Requests counted so far in a rate limit's window, without counting one."""

    def peek(redis: Redis | RedisCluster) -> list:
        with redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            return pipe.execute()

    count, ms_left = call(peek)
    try:
        return WindowCount(int(count or 0), ms_left)
    except ValueError:
        # Not written by the scripts: the counter is as good as unreadable, and its
        # INCR fails too, so the limit lets requests through as while Redis is down.
        raise CacheUnavailable(f"{key} holds no count") from None


@dataclasses.dataclass(frozen=True, slots=True)
class EventWindow:
    """How a counter of events counts (``scripts.EVENT_WINDOW``): in a window of
    ``window_ms`` that starts with its first event, or that each event starts
    again (``sliding``); from ``limit`` events on the counter is over its limit,
    and it keeps when it got there."""

    window_ms: int
    sliding: bool
    limit: int


@dataclasses.dataclass(frozen=True, slots=True)
class EventCount:
    """Events in a counter's window, and the milliseconds left in it (negative: no
    counter, or no expiry); ``counted`` is False where the event asked to be
    counted was not (Redis full), so that the caller counts it elsewhere."""

    count: int
    ms_left: int
    counted: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class EventRecord:
    """An event counter whole, for operators: times in ms since the epoch."""

    count: int
    ms_left: int
    since_ms: int
    over_ms: int | None
    subject: str


def events_counted(
    counts: Sequence[tuple[str, EventWindow | None, str]], *, now_ms: int
) -> list[EventCount]:
    """For each (key, window, subject): counts an event in that window, or, with
    no window, reads the count; one round trip (one per node on a cluster)."""

    def call_of(key: str, window: EventWindow | None, subject: str) -> tuple[list, list]:
        if window is None:
            return [key], ["peek"]
        sliding = "1" if window.sliding else "0"
        return [key], ["count", now_ms, window.window_ms, sliding, window.limit, subject]

    calls = [call_of(*count) for count in counts]
    replies = eval_many(scripts.EVENT_WINDOW, calls)
    return [EventCount(reply[0], reply[1], bool(reply[2:] and reply[2])) for reply in replies]


def event_records(keys: Sequence[str], *, take: bool = False) -> list[EventRecord | None]:
    """The counters at ``keys`` (None where there is none), in one round trip (one
    per node on a cluster); ``take`` deletes them as it reads them."""
    calls = [([key], ["take" if take else "read"]) for key in keys]
    records: list[EventRecord | None] = []
    for ms_left, flat in eval_many(scripts.EVENT_WINDOW, calls):
        records.append(_event_record(decode_hash(flat), ms_left))
    return records


def _event_record(fields: dict[str, str] | None, ms_left: int) -> EventRecord | None:
    """A counter as its script writes it; None for none, or for one whose numbers are
    not numbers (written by someone else: it is no counter of this service's)."""
    if not fields:
        return None
    numbers = [fields.get("count", "0"), fields.get("since", "0"), fields.get("over", "0")]
    if not all(value.isascii() and value.isdigit() and len(value) <= 15 for value in numbers):
        return None
    over = fields.get("over")
    return EventRecord(
        count=int(numbers[0]),
        ms_left=ms_left,
        since_ms=int(numbers[1]),
        over_ms=None if over is None else int(over),
        subject=fields.get("subject", ""),
    )


def events_index_add(index_key: str, keys: Sequence[str], *, ttl_ms: int) -> None:
    """Notes ``keys`` in the hash ``index_key``, which expires in ``ttl_ms``."""

    def add(redis: Redis | RedisCluster) -> None:
        with redis.pipeline(transaction=False) as pipe:
            pipe.hset(index_key, mapping=dict.fromkeys(keys, 1))
            pipe.pexpire(index_key, ttl_ms)
            pipe.execute()

    call(add)


def events_indexed(index_keys: Sequence[str]) -> list[str]:
    """Every key noted in the hashes ``index_keys``, in one round trip (one per node
    on a cluster), each once."""

    def read(redis: Redis | RedisCluster) -> list:
        with redis.pipeline(transaction=False) as pipe:
            for index_key in index_keys:
                pipe.hgetall(index_key)
            return pipe.execute()

    noted = (field.decode() for hash_ in call(read) for field in hash_)
    return list(dict.fromkeys(noted))


class LocalWindows:
    """Rate-limit counts taken in process, for requests served from the near cache
    with no Redis round trip, and added to their counters in Redis in batches
    (every ``RATE_SYNC_MS``, by a thread of their own).

    A request is allowed while the window's count last read from Redis plus this
    process's requests since stay within the rate: each process learns the
    others' counts at each addition, so across P processes a client can go past
    its rate by at most what P - 1 processes admit it in one ``RATE_SYNC_MS``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # counter key -> [count in Redis when last added to, requests since,
        # window end (monotonic), window (ms)]
        self._windows: dict[str, list] = {}
        self._worker = Worker("rate-counts", self._add_forever)

    def count(self, key: str, window_ms: int, cost: int = 1) -> WindowCount:
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            if window is None or window[2] <= now:
                window = self._windows[key] = [0, 0, now + window_ms / 1000, window_ms]
            window[1] += cost
            counted = WindowCount(window[0] + window[1], int((window[2] - now) * 1000))
        self._worker.ensure()
        return counted

    def seen(self, key: str, counted: WindowCount, window_ms: int) -> None:
        """A count Redis just gave for ``key``: this process's own requests continue
        from it."""
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            since = window[1] if window is not None and window[2] > now else 0
            end = now + max(counted.ms_left, 0) / 1000
            self._windows[key] = [counted.count, since, end, window_ms]

    def add_to_redis(self) -> None:
        """Adds each counter's requests since its last addition, and reads back the
        count all processes reached; a counter Redis does not take stays for later."""
        with self._lock:
            pending = {
                key: (window[1], window[3]) for key, window in self._windows.items() if window[1]
            }
        for key, (requests, window_ms) in pending.items():
            try:
                count, ms_left = run_script(scripts.ADD_TO_WINDOW, [key], [requests, window_ms])
            except CacheUnavailable:
                return
            with self._lock:
                window = self._windows.get(key)
                if window is not None:
                    window[0], window[1] = count, window[1] - requests
                    if ms_left > 0:
                        window[2] = time.monotonic() + ms_left / 1000
        now = time.monotonic()
        with self._lock:
            for key in [key for key, window in self._windows.items() if window[2] <= now]:
                del self._windows[key]

    def _add_forever(self) -> None:
        while True:
            time.sleep(user_cache_settings.RATE_SYNC_MS / 1000)
            self.add_to_redis()


local_windows = LocalWindows()
