"""The login limits' counts in this process's memory, for the events Redis does not
take (it does not answer, is paused or slow past its timeout, or is full):
``limits`` judges by the sum of both, so the limits hold per process meanwhile.
Apart from ``limits`` because it is a store of its own, with its own bound and
eviction, counted as ``scripts.EVENT_WINDOW`` counts in Redis.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from ..cache.counters import EventCount, EventRecord, EventWindow

# What a process keeps while Redis does not take its counts; past it, the least
# recently used counters are forgotten.
PROCESS_COUNTERS_MAX = 10_000


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
