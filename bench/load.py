"""Drives a server with wrk (bench/scenarios.lua) and reads back its figures."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

_SCRIPT = Path(__file__).with_name("scenarios.lua")
_RESULT_MARK = "BENCH-RESULT "
_EXHAUSTED_MARK = "ids-exhausted"
# wrk's threads; each has connections / threads connections. Two, like the cores.
WRK_THREADS = 2


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """One wrk run, or several merged: completed requests over the time they took,
    and every request's latency (a histogram: µs -> how many)."""

    requests: int
    seconds: float
    latency_us: Counter[int]
    # connect, read, write errors and timeouts; a gunicorn worker recycled by
    # max_requests closes its keep-alive connections, which wrk counts as read errors.
    socket_errors: int
    # Commands Redis ran meanwhile (INFO commandstats), whoever sent them: the
    # service's requests and its background work (batched rate counts, PINGs).
    redis_commands: int = 0
    # The near cache's lookups meanwhile (entries: tokens and users), on the
    # service's servers that have one; 0 and 0 elsewhere.
    near_hits: float = 0
    near_misses: float = 0

    @classmethod
    def merged(cls, results: list[LoadResult]) -> LoadResult:
        return cls(
            requests=sum(result.requests for result in results),
            seconds=sum(result.seconds for result in results),
            latency_us=sum((result.latency_us for result in results), Counter()),
            socket_errors=sum(result.socket_errors for result in results),
            redis_commands=sum(result.redis_commands for result in results),
            near_hits=sum(result.near_hits for result in results),
            near_misses=sum(result.near_misses for result in results),
        )

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def latency_ms(self, percentile: float) -> float:
        """The nearest-rank percentile over every request."""
        rank = math.ceil(percentile / 100 * self.latency_us.total())
        seen = 0
        for value, count in sorted(self.latency_us.items()):
            seen += count
            if seen >= rank:
                return value / 1000
        raise ValueError("no latency recorded")

    @property
    def near_hit_ratio(self) -> float | None:
        """The near cache's hits over its lookups; None where it was not looked at."""
        lookups = self.near_hits + self.near_misses
        return self.near_hits / lookups if lookups else None

    @property
    def redis_commands_per_request(self) -> float:
        return self.redis_commands / self.requests

    @property
    def redis_commands_per_second(self) -> float:
        return self.redis_commands / self.seconds

    @property
    def p50_ms(self) -> float:
        return self.latency_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.latency_ms(99)

    @property
    def p999_ms(self) -> float:
        return self.latency_ms(99.9)


class LoadError(RuntimeError):
    """wrk failed, or the service answered with errors, so the figures mean nothing."""


def run_wrk(
    *,
    url: str,
    token: str | None,
    scenario: str,
    path: str,
    argument: str = "-",
    duration_s: float,
    connections: int,
) -> LoadResult:
    """Runs one scenario of bench/scenarios.lua on ``path`` for ``duration_s`` seconds,
    rounded to whole seconds (wrk takes no fractions), at least one. ``token``: the
    API token to send, or None to send no Authorization header (the peers).

    The walks (``get-sequential``, ``get-burst``) may end sooner: once every wrk
    thread has walked its ids, wrk is interrupted, and it reports the time it
    really ran.
    """
    command = [
        "wrk",
        f"--threads={WRK_THREADS}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=5s",
        f"--script={_SCRIPT}",
        url,
        "--",
        scenario,
        token or "-",
        str(WRK_THREADS),
        argument,
        path,
        str(connections // WRK_THREADS),
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(duration_s + 30, process.kill)
    watchdog.start()
    output: list[str] = []
    exhausted_threads = 0
    try:
        for line in process.stdout:
            output.append(line)
            if line.strip() == _EXHAUSTED_MARK:
                exhausted_threads += 1
                if exhausted_threads == WRK_THREADS:
                    process.send_signal(signal.SIGINT)
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError):
            process.stdout.close()
    return _parse(output, process.returncode, scenario)


def _parse(output: list[str], returncode: int, scenario: str) -> LoadResult:
    text = "".join(output)
    lines = [line for line in output if line.startswith(_RESULT_MARK)]
    if returncode != 0 or not lines:
        raise LoadError(f"wrk ({scenario}) exited with {returncode}:\n{text}")
    figures = json.loads(lines[-1][len(_RESULT_MARK) :])
    if figures["http_errors"]:
        raise LoadError(
            f"{scenario}: {figures['http_errors']} of {figures['requests']} responses"
            f" were HTTP errors (4xx or 5xx):\n{text}"
        )
    if not figures["requests"]:
        raise LoadError(f"{scenario}: no request completed:\n{text}")
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        latency_us=Counter(dict(figures["latency_us"])),
        socket_errors=figures["socket_errors"],
    )
