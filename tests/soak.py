"""Soak under faults: the production server under mixed load while its stores fail.

Starts its own mariadbd (with the binary log on), redis-server, the service under
gunicorn (production settings) and the binary log follower, drives mostly reads
with some creates, updates and deletes from several threads, and meanwhile
restarts Redis, pauses it, and stops MySQL for a moment. Beside the API's
clients, a writer changes cached users in raw SQL, behind the service's back
(single rows, several rows in one statement, transactions, deletes and inserts,
keeping the number of its users in a band so it never runs out of them), and
times how long each change takes to reach Redis through the follower.

The run is cut into phases, each fault's window and the quiet time between, and
the report counts each kind of operation per phase (reads, API writes, writes
in SQL, faults injected) with the writes' lag to Redis. At the end it reports
requests, a status histogram and the 5xx count (503s are expected only while
MySQL is down), then lets the follower catch up and checks consistency directly
in the stores: every cached user equals its MySQL row, and every acknowledged
write (201, 200, 204) is what MySQL holds.

The verdict also watches the load itself, since a load that stopped proves
nothing: a load thread that raised or returned before the end of the run fails
it (with its traceback), and so does one that did nothing in a phase where it
should have worked. A thread that went quiet for a long stretch and came back
is reported.

    python -m tests.soak --seconds 20     # the short mode .ci/run uses
    python -m tests.soak --seconds 600    # a long soak

Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import functools
import http.client
import itertools
import json
import math
import os
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import django
import MySQLdb
import redis

# The entry's field names come from the code that writes them, which is a Django
# app's: set up with the test settings when run on its own (./scripts/soak).
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

from tests.servers import (  # noqa: E402
    BinlogFollower,
    MariaDBServer,
    RedisServer,
    WebService,
    service_stack,
)
from users.cache.keys import SCHEMA_VERSION  # noqa: E402
from users.cache.kinds import ABSENT as ABSENT_FIELD  # noqa: E402
from users.entries import NAME_OF, VERSION  # noqa: E402

FIRST_NAME = NAME_OF["first_name"]

# A write's effect is certain only when it was acknowledged; a write that failed
# with a 5xx may or may not have committed, so its user is checked for cache
# consistency only.
ACKNOWLEDGED = {200, 201, 204}

# The kinds of operation the load threads count, as the report's columns name them.
READS, API_WRITES, SQL_WRITES, FAULTS_INJECTED = "reads", "API writes", "SQL writes", "faults"
OPERATIONS = (READS, API_WRITES, SQL_WRITES, FAULTS_INJECTED)

# The kinds of phase: a fault's window, or the quiet time around the faults.
QUIET, FAULT = "quiet", "fault"

# A thread that finished nothing for this many times its median interval between
# operations (and at least STALL_FLOOR_SECONDS), not counting fault windows, has
# stalled; doing nothing through a whole phase that long fails the run.
STALL_FACTOR = 10
STALL_FLOOR_SECONDS = 1.0

# After the end of the run, how long a load thread has to notice and return. The
# writer in SQL may be waiting for its last change to reach Redis.
STOP_SECONDS = 90.0


class Progress:
    """When a load thread finished each of its operations, by kind: a thread that
    stopped working shows as a zero in a phase, and a stall as a long gap."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)

    def record(self, kind: str) -> None:
        self.times[kind].append(time.monotonic())

    def moments(self) -> list[float]:
        return sorted(itertools.chain.from_iterable(self.times.values()))


class Population:
    """The users the clients read and the writer in SQL changes. The writer also
    deletes and creates users, keeping the living between ``low`` and ``high`` so
    that it has users to change however long the run; the last ones it deleted
    stay readable (each such read is a 404 that fills the negative cache)."""

    def __init__(self, user_ids: list[int], *, spread: int) -> None:
        self.low, self.high = len(user_ids), len(user_ids) + spread
        self._alive = list(user_ids)
        self._gone: collections.deque[int] = collections.deque(maxlen=max(3, len(user_ids) // 4))
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many of its users live."""
        with self._lock:
            return len(self._alive)

    def readable(self) -> list[int]:
        with self._lock:
            return self._alive + list(self._gone)

    def sample(self, rng: random.Random, count: int) -> list[int]:
        with self._lock:
            return rng.sample(self._alive, count)

    def next_change_deletes(self, rng: random.Random) -> bool:
        """Whether the next change of membership is a delete: always above the band,
        never at its floor, else one time in two."""
        size = len(self)
        return size >= self.high or (size > self.low and rng.random() < 0.5)

    def created(self, user_id: int) -> None:
        with self._lock:
            self._alive.append(user_id)

    def deleted(self, user_id: int) -> None:
        with self._lock:
            self._alive.remove(user_id)
            self._gone.append(user_id)


@dataclass
class Worker:
    """One client thread; it alone writes the users it owns, so the last write it
    saw acknowledged is what MySQL must hold."""

    web: WebService
    seed: int
    population: Population
    started: float
    tag: str
    owned: dict[int, dict | None] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)
    # What happened to each user, to explain a failed check: "time METHOD status cache".
    history: collections.defaultdict = field(default_factory=lambda: collections.defaultdict(list))

    def run(self, stop: threading.Event, mysql_down: threading.Event) -> None:
        rng = random.Random(self.seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=10)
        counter = 0
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.80:
                user_id = rng.choice(self.population.readable() + list(self.owned))
                method, path, body = "GET", f"/api/user/{user_id}", None
            elif roll < 0.88 or not self.owned:
                counter += 1
                name = f"w{self.tag}-{self.seed}-{counter}"
                method, path, body = (
                    "POST",
                    "/api/user",
                    {"username": name, "email": f"{name}@x.io"},
                )
            elif roll < 0.96:
                user_id = rng.choice(list(self.owned))
                body = {"first_name": f"f{rng.randrange(10**6)}"}
                method, path = "PATCH", f"/api/user/{user_id}"
            else:
                user_id = rng.choice(list(self.owned))
                method, path, body = "DELETE", f"/api/user/{user_id}", None
            was_down = mysql_down.is_set()
            status, payload, cache_result = self._send(connection, method, path, body)
            if status is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=10)
            self.statuses[status] += 1
            self._record(
                method, path, status, payload, cache_result, was_down or mysql_down.is_set()
            )
            self.progress.record(READS if method == "GET" else API_WRITES)
        connection.close()

    def _send(self, connection, method, path, body) -> tuple[int | None, dict, str]:
        headers = {"Authorization": f"Token {self.web.token}", "Content-Type": "application/json"}
        try:
            connection.request(method, path, json.dumps(body) if body else None, headers)
            response = connection.getresponse()
            raw = response.read()
            cache_result = response.getheader("X-Cache", "")
            return response.status, (json.loads(raw) if raw else {}), cache_result
        except (OSError, http.client.HTTPException):
            connection.close()
            return None, {}, ""

    def _record(self, method, path, status, payload, cache_result, mysql_was_down) -> None:
        expected_outage = status == 503 and mysql_was_down
        if (status is None or status >= 500) and not expected_outage:
            self.unexpected.append(f"{method} {path} -> {status} {payload}")
        user_id = payload.get("id") if method == "POST" else int(path.rsplit("/", 1)[1])
        if user_id is not None:
            moment = time.monotonic() - self.started
            self.history[user_id].append(f"{moment:.3f}s {method} {status} {cache_result}".strip())
        if method == "GET" or status in {400, 404, 409}:
            return
        if status in ACKNOWLEDGED:
            self.owned[user_id] = None if method == "DELETE" else payload
        elif user_id is not None:
            self.uncertain.add(user_id)


@dataclass
class BypassWriter:
    """Changes cached users in raw SQL, as another application or a DBA would, and
    times each change from its commit until Redis no longer holds the old state
    (the entry deleted, or refilled by a reader with the new one). Samples taken
    while a fault is on are dropped: they time the fault, not the follower."""

    mariadb: MariaDBServer
    redis_server: RedisServer
    key_prefix: str
    population: Population
    tag: str
    progress: Progress = field(default_factory=Progress)
    # (the moment of the commit, its lag), so the lag is reported per phase.
    lags: list[tuple[float, float]] = field(default_factory=list)
    shapes: collections.Counter = field(default_factory=collections.Counter)
    late: list[str] = field(default_factory=list)

    # Past this, a change counts as not having reached the cache.
    GIVE_UP_SECONDS = 30.0

    def run(self, stop: threading.Event, faulting: threading.Event) -> None:
        rng = random.Random(4242)
        connection = None
        counter = 0
        while not stop.is_set():
            time.sleep(0.02)
            if faulting.is_set():
                continue
            try:
                if connection is None:
                    connection = MySQLdb.connect(
                        host="127.0.0.1", port=self.mariadb.port, user="root", db="usersvc",
                        autocommit=True, connect_timeout=2,
                    )  # fmt: skip
                counter += 1
                self._write(connection.cursor(), rng, f"sql{self.tag}-{counter}", faulting)
            except (MySQLdb.Error, redis.RedisError):
                connection = None  # a fault began: reconnect once it is over

    def _write(self, cursor, rng: random.Random, value: str, faulting) -> None:
        client = redis.Redis(port=self.redis_server.port, decode_responses=True, socket_timeout=2)
        ids = self.population.sample(rng, 3)
        before = {user_id: client.hget(self._key(user_id), FIRST_NAME) for user_id in ids}
        roll = rng.random()
        set_value = "SET first_name = %s, version = version + 1"
        if roll < 0.55:
            shape, changed = "single-row update", ids[:1]
            cursor.execute(f"UPDATE users_user {set_value} WHERE id = %s", [value, ids[0]])
        elif roll < 0.75:
            shape, changed = "multi-row update", ids
            cursor.execute(f"UPDATE users_user {set_value} WHERE id IN (%s, %s, %s)", [value, *ids])
        elif roll < 0.9:
            shape, changed = "transaction", ids[:2]
            cursor.execute("BEGIN")
            for user_id in changed:
                cursor.execute(f"UPDATE users_user {set_value} WHERE id = %s", [value, user_id])
            cursor.execute("COMMIT")
        elif self.population.next_change_deletes(rng):
            shape, changed = "delete", ids[:1]
            cursor.execute("DELETE FROM users_user WHERE id = %s", [ids[0]])
            self.population.deleted(ids[0])
        else:
            # Nobody has read a new user yet: there is no cached state to time.
            shape, changed = "insert", []
            cursor.execute(
                "INSERT INTO users_user (password, is_superuser, username, first_name, last_name,"
                " email, is_staff, is_active, version, date_joined, updated_at)"
                " VALUES ('!', 0, %s, %s, '', %s, 0, 1, 1, NOW(6), NOW(6))",
                [value, value, f"{value}@x.io"],
            )
            self.population.created(cursor.lastrowid)
        committed = time.monotonic()
        self.shapes[shape] += 1
        self.progress.record(SQL_WRITES)
        waiting = {user_id for user_id in changed if before[user_id] is not None}
        timed, disturbed = bool(waiting), faulting.is_set()
        while waiting:
            waiting = {
                user_id for user_id in waiting
                if client.hget(self._key(user_id), FIRST_NAME) == before[user_id]
            }  # fmt: skip
            elapsed = time.monotonic() - committed
            if elapsed > self.GIVE_UP_SECONDS:
                self.late += [
                    f"user {user_id}: {shape} to {value!r} not in Redis after {elapsed:.0f}s, "
                    f"which holds {client.hgetall(self._key(user_id))}"
                    for user_id in waiting
                ]
                return
            disturbed = disturbed or faulting.is_set()
            time.sleep(0.001)
        if timed and not disturbed:
            self.lags.append((committed, time.monotonic() - committed))

    def _key(self, user_id: int) -> str:
        return f"{self.key_prefix}:v{SCHEMA_VERSION}:user:{{{user_id}}}"


@dataclass(frozen=True)
class Window:
    """A fault's window: from the fault's start until the service had a second to
    recover from it."""

    name: str
    start: float
    end: float


FAULTS = ("redis-restart", "mysql-stop", "redis-pause")


@dataclass
class Faults:
    """Restarts Redis at 1/4 of the run, stops MySQL at 1/2, pauses Redis at 3/4,
    each at least ``quiet`` seconds after the previous window closed, so that every
    quiet phase is long enough to show a thread that stopped. ``faulting`` is set
    during each window, ``mysql_down`` while MySQL is stopped."""

    seconds: float
    chosen: set[str]
    mysql_outage: float
    quiet: float
    redis_server: RedisServer
    mariadb: MariaDBServer
    mysql_down: threading.Event
    faulting: threading.Event
    log: Callable[[str], None]
    windows: list[Window] = field(default_factory=list)
    progress: Progress = field(default_factory=Progress)

    def run(self, started: float) -> None:
        schedule = (
            (0.25, "redis-restart", self._restart_redis),
            (0.5, "mysql-stop", self._stop_mysql),
            (0.75, "redis-pause", self._pause_redis),
        )
        ready = started
        for fraction, name, inject in schedule:
            if name not in self.chosen:
                continue
            at = max(started + self.seconds * fraction, ready + self.quiet)
            time.sleep(max(0.0, at - time.monotonic()))
            begun = time.monotonic()
            self.progress.record(FAULTS_INJECTED)
            self.faulting.set()
            try:
                inject()
            finally:
                self.faulting.clear()
                ready = time.monotonic()
                self.windows.append(Window(name, begun, ready))

    def _restart_redis(self) -> None:
        self.log("fault: restarting redis-server (its data is lost)")
        self.redis_server.restart()
        time.sleep(1.0)

    def _stop_mysql(self) -> None:
        self.log(f"fault: stopping mariadbd for {self.mysql_outage}s")
        self.mysql_down.set()
        try:
            self.mariadb.stop()
            time.sleep(self.mysql_outage)
            self.mariadb.start()
            time.sleep(1.0)  # workers reconnect; a 503 just after the restart still counts
        finally:
            self.mysql_down.clear()
        self.log("fault: mariadbd is back")

    def _pause_redis(self) -> None:
        self.log("fault: pausing redis-server for 1s (SIGSTOP)")
        self.redis_server.pause()
        try:
            time.sleep(1.0)
        finally:
            self.redis_server.resume()
        time.sleep(1.0)


class LoadThread:
    """A load thread under watch: what ended it (an exception's traceback, or a
    return) and when, and the operations it finished. ``works_in`` names the
    kinds of phase in which it must make progress."""

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        progress: Progress,
        *,
        works_in: frozenset[str],
        runs_to_end: bool = True,
    ) -> None:
        self.name, self.target, self.progress = name, target, progress
        self.works_in, self.runs_to_end = works_in, runs_to_end
        self.error: str | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def _main(self) -> None:
        try:
            self.target()
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            self.ended = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def join(self, deadline: float | None = None) -> None:
        self.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class Phase:
    """A stretch of the run counted apart: a fault's window (``FAULT``) or the
    quiet time around them (``QUIET``)."""

    name: str
    kind: str
    start: float
    end: float


def _phases(windows: list[Window], start: float, end: float) -> list[Phase]:
    """The fault windows and the quiet time before, between and after them."""
    phases, cursor = [], start
    for number, window in enumerate(windows, 1):
        phases.append(Phase(f"quiet {number}", QUIET, cursor, window.start))
        phases.append(Phase(window.name, FAULT, window.start, window.end))
        cursor = window.end
    phases.append(Phase(f"quiet {len(windows) + 1}", QUIET, cursor, max(cursor, end)))
    return phases


def _phase_of(phases: list[Phase], moment: float) -> int:
    """The index of the phase holding ``moment``; the first or the last when outside."""
    return max(0, bisect.bisect_right([phase.start for phase in phases], moment) - 1)


def _outside_windows(start: float, end: float, windows: list[Window]) -> float:
    """How much of [start, end] lies outside every fault window."""
    inside = sum(max(0.0, min(end, window.end) - max(start, window.start)) for window in windows)
    return end - start - inside


def _patience(moments: list[float]) -> float:
    """How long a thread may go without finishing an operation before it has stalled."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
    if not gaps:
        return STALL_FLOOR_SECONDS
    return max(STALL_FACTOR * statistics.median(gaps), STALL_FLOOR_SECONDS)


@dataclass
class LoadVerdict:
    """What the load threads did: operations per phase and kind (summed over the
    threads), the failures (deaths, early ends, phases with nothing done) and the
    stalls, which are reported without failing the run."""

    phases: list[Phase]
    counts: list[collections.Counter]
    failures: list[str]
    stalls: list[str]


def judge_load(
    threads: list[LoadThread], windows: list[Window], start: float, stopped: float
) -> LoadVerdict:
    phases = _phases(windows, start, stopped)
    counts = [collections.Counter() for _ in phases]
    failures, stalls = [], []
    for load in threads:
        per_phase = [collections.Counter() for _ in phases]
        for kind, moments in load.progress.times.items():
            for moment in moments:
                per_phase[_phase_of(phases, moment)][kind] += 1
        for total, own in zip(counts, per_phase, strict=True):
            total.update(own)
        if load.thread.is_alive():
            failures.append(f"{load.name} still running {STOP_SECONDS:.0f}s after the end")
            continue
        if load.error is not None:
            failures.append(
                f"{load.name} died at {load.ended - start:.1f}s:\n{load.error.rstrip()}"
            )
            continue
        if load.runs_to_end and load.ended < stopped:
            failures.append(
                f"{load.name} returned at {load.ended - start:.1f}s, before the end of the "
                f"run at {stopped - start:.1f}s"
            )
            continue
        if not load.runs_to_end:
            continue
        moments = load.progress.moments()
        patience = _patience(moments)
        for phase, own in zip(phases, per_phase, strict=True):
            if phase.kind in load.works_in and phase.end - phase.start >= patience and not own:
                failures.append(
                    f"{load.name} did nothing in {phase.name} "
                    f"({phase.start - start:.1f}-{phase.end - start:.1f}s), where it works"
                )
        for earlier, later in itertools.pairwise([start, *moments, stopped]):
            if _outside_windows(earlier, later, windows) > patience:
                stalls.append(
                    f"{load.name}: nothing done from {earlier - start:.1f}s to "
                    f"{later - start:.1f}s (it stalls past {patience * 1000:.0f} ms)"
                )
    return LoadVerdict(phases, counts, failures, stalls)


def _percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * fraction) - 1)] if ordered else float("nan")


def _caught_up(follower: BinlogFollower, mariadb: MariaDBServer, timeout: float) -> bool:
    """Waits until the follower has applied the binary log up to where it ends now."""
    connection = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root")
    cursor = connection.cursor()
    cursor.execute("SHOW MASTER STATUS")
    log_file, log_pos = cursor.fetchone()[:2]
    connection.close()
    target = (int(log_file.rsplit(".", 1)[1]), log_pos)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = follower.metrics()
        position = (
            metrics["usersvc_binlog_position_file"],
            metrics["usersvc_binlog_position_offset"],
        )
        if position >= target:
            return True
        time.sleep(0.1)
    return False


def _check_stores(web, mariadb, redis_server, workers) -> dict:
    connection = MySQLdb.connect(host="127.0.0.1", port=mariadb.port, user="root", db="usersvc")
    cursor = connection.cursor(MySQLdb.cursors.DictCursor)
    cursor.execute(
        "SELECT id, username, email, first_name, last_name, is_active, version FROM users_user"
    )
    rows = {row["id"]: row for row in cursor.fetchall()}
    connection.close()

    client = redis.Redis(port=redis_server.port, decode_responses=True)
    stale, cached = [], 0
    pattern = f"{web.env['CACHE_KEY_PREFIX']}:v{SCHEMA_VERSION}:user:*"
    for key in client.scan_iter(match=pattern, count=1000):
        entry = client.hgetall(key)
        if not entry:
            continue  # expired between SCAN and HGETALL
        user_id = int(key.rsplit("{", 1)[1].rstrip("}"))
        row = rows.get(user_id)
        cached += 1
        if ABSENT_FIELD in entry:
            if row is not None:
                stale.append((user_id, "exists but is cached as absent", entry))
        elif row is None:
            stale.append((user_id, "is deleted but cached", entry))
        elif int(entry[VERSION.name]) != row["version"] or entry[FIRST_NAME] != row["first_name"]:
            cached_version = entry[VERSION.name]
            stale.append(
                (user_id, f"is cached at v{cached_version}, MySQL has v{row['version']}", entry)
            )

    acknowledged, lost = 0, []
    for worker in workers:
        for user_id, expected in worker.owned.items():
            if user_id in worker.uncertain:
                continue
            acknowledged += 1
            row = rows.get(user_id)
            if expected is None and row is not None:
                lost.append(f"user {user_id}: delete acknowledged, row still there")
            elif expected is not None and (
                row is None or row["first_name"] != expected["first_name"]
            ):
                lost.append(f"user {user_id}: acknowledged {expected['first_name']!r}, MySQL {row}")
    return {"cached": cached, "stale": stale, "acknowledged": acknowledged, "lost": lost}


@dataclass
class Stack:
    """The servers a soak runs against; several short soaks can share one."""

    mariadb: MariaDBServer
    redis_server: RedisServer
    web: WebService
    follower: BinlogFollower


@contextlib.contextmanager
def soak_stack(workdir: Path) -> Iterator[Stack]:
    """The servers a soak runs against, started, with the binary log follower."""
    with service_stack(workdir, binlog=True, THROTTLE_RATE_USER="off") as (
        mariadb, redis_server, web,
    ):  # fmt: skip
        web.start()
        follower = BinlogFollower(workdir, web.env)
        follower.start()
        try:
            yield Stack(mariadb, redis_server, web, follower)
        finally:
            follower.stop()


@dataclass
class Report:
    """What a soak prints (``lines``) and why it failed (``failures``: none when it
    passed), with the load's own figures for a caller to check."""

    lines: list[str]
    failures: list[str]
    load: LoadVerdict

    @property
    def ok(self) -> bool:
        return not self.failures


def _lag_figures(lags_ms: list[float]) -> str:
    if not lags_ms:
        return "none timed"
    return (
        f"{len(lags_ms)} timed, median {_percentile(lags_ms, 0.5):.1f} ms, "
        f"p99 {_percentile(lags_ms, 0.99):.1f} ms"
    )


def run(args: argparse.Namespace, stack: Stack, log: Callable[[str], None]) -> Report:
    """One soak against ``stack``: its own users (named apart from any other run's),
    the load and the faults, then the checks."""
    mariadb, redis_server, web, follower = (
        stack.mariadb, stack.redis_server, stack.web, stack.follower,
    )  # fmt: skip
    started, tag = time.monotonic(), secrets.token_hex(3)
    log(f"service on port {web.port}, follower on {follower.port}; creating {args.users} users")
    seeded = [
        web.request(
            "POST", "/api/user", {"username": f"seed{tag}-{n}", "email": f"seed{tag}-{n}@x.io"}
        )[2]["id"]
        for n in range(args.users)
    ]
    population = Population(seeded, spread=max(3, args.users // 10))
    workers = [Worker(web, seed, population, started, tag) for seed in range(args.threads)]
    bypass = BypassWriter(mariadb, redis_server, web.env["CACHE_KEY_PREFIX"], population, tag)
    stop, mysql_down, faulting = threading.Event(), threading.Event(), threading.Event()
    faults = Faults(
        args.seconds, args.faults, args.mysql_outage, max(2.0, args.seconds / 10),
        redis_server, mariadb, mysql_down, faulting, log,
    )  # fmt: skip
    everywhere = frozenset({QUIET, FAULT})
    threads = [
        LoadThread(f"client-{worker.seed}", functools.partial(worker.run, stop, mysql_down),
                   worker.progress, works_in=everywhere)
        for worker in workers
    ]  # fmt: skip
    threads.append(
        LoadThread("sql-writer", functools.partial(bypass.run, stop, faulting), bypass.progress,
                   works_in=frozenset({QUIET}))
    )  # fmt: skip
    log(f"load for {args.seconds}s from {args.threads} threads and a writer in SQL")
    load_started = time.monotonic()
    fault_thread = LoadThread(
        "faults", functools.partial(faults.run, load_started), faults.progress,
        works_in=frozenset(), runs_to_end=False,
    )  # fmt: skip
    threads.append(fault_thread)
    follower_before = follower.metrics()
    for thread in threads:
        thread.start()
    fault_thread.join()  # bounded: the servers' stop and start give up in their own time
    last_fault = max((window.end for window in faults.windows), default=0.0)
    until = max(load_started + args.seconds, last_fault + faults.quiet)
    time.sleep(max(0.0, until - time.monotonic()))
    stopped = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(stopped + STOP_SECONDS)
    load_seconds = stopped - load_started
    verdict = judge_load(threads, faults.windows, load_started, stopped)
    missing = sorted(args.faults - {window.name for window in faults.windows})
    if missing:
        verdict.failures.append(f"faults not injected: {', '.join(missing)}")

    log("load stopped; letting the outbox drain and the follower catch up")
    try:
        follower_after = follower.metrics()
        time.sleep(2.0)
        caught_up = _caught_up(follower, mariadb, timeout=60)
        result = _check_stores(web, mariadb, redis_server, workers)
    except Exception:
        verdict.failures.append(f"the stores could not be checked:\n{traceback.format_exc()}")
        return Report([], verdict.failures, verdict)
    return _report(
        args, workers, bypass, verdict, result, caught_up, load_seconds,
        follower_before, follower_after,
    )  # fmt: skip


def _report(
    args, workers, bypass, verdict, result, caught_up, load_seconds, follower_before,
    follower_after,
) -> Report:  # fmt: skip
    lines = ["", "## Soak result", ""]
    statuses = collections.Counter()
    for worker in workers:
        statuses.update(worker.statuses)
    unexpected = [line for worker in workers for line in worker.unexpected]
    total = sum(statuses.values())
    rate = total / load_seconds
    lines.append(
        f"- requests: {total} in {load_seconds:.0f}s ({rate:.0f}/s), {args.threads} threads"
    )
    lines.append(
        "- statuses: "
        + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
    )
    lines.append(f"- 5xx outside the MySQL outage, or connection errors: {len(unexpected)}")
    lines.append(
        f"- 503 during the MySQL outage: {statuses[503] - sum('-> 503' in u for u in unexpected)}"
    )
    lines.append(
        f"- cached users checked against MySQL: {result['cached']}, stale: {len(result['stale'])}"
    )
    lost = len(result["lost"])
    lines.append(f"- acknowledged writes checked: {result['acknowledged']}, not in MySQL: {lost}")
    shapes = ", ".join(f"{shape}: {n}" for shape, n in sorted(bypass.shapes.items()))
    lines.append(f"- writes in SQL behind the service: {sum(bypass.shapes.values())} ({shapes})")
    lags_ms = [lag * 1000 for _, lag in bypass.lags]
    lines.append(
        f"- their lag to Redis, commit to old state gone, outside faults: {_lag_figures(lags_ms)}, "
        f"max {max(lags_ms, default=float('nan')):.1f} ms; not there within "
        f"{BypassWriter.GIVE_UP_SECONDS:.0f}s: {len(bypass.late)}"
    )

    def grown(name: str) -> float:
        return sum(
            value - follower_before.get(sample, 0.0)
            for sample, value in follower_after.items()
            if sample.startswith(name + "{")
        )

    events, rows = grown("usersvc_binlog_events_total"), grown("usersvc_binlog_rows_total")
    errors = {
        store: follower_after.get(f'usersvc_binlog_errors_total{{store="{store}"}}', 0.0)
        - follower_before.get(f'usersvc_binlog_errors_total{{store="{store}"}}', 0.0)
        for store in ("mysql", "redis")
    }
    lines.append(
        f"- follower: {events:.0f} events ({events / load_seconds:.0f}/s), {rows:.0f} rows of "
        f"users and tokens; retried errors: mysql {errors['mysql']:.0f}, "
        f"redis {errors['redis']:.0f}"
    )
    lines.append(f"- follower caught up with the binary log after the load: {caught_up}")
    lines += _phase_table(verdict, bypass)
    lines.append(
        f"- stalls (nothing done for {STALL_FACTOR}x a thread's median interval, "
        f"{STALL_FLOOR_SECONDS:.0f}s at least, outside faults; reported, not failing): "
        f"{len(verdict.stalls)}"
    )
    lines += [f"  ~ {stall}" for stall in verdict.stalls[:20]]
    for line in (unexpected + result["lost"] + bypass.late)[:20]:
        lines.append(f"  ! {line}")
    histories = collections.defaultdict(list)
    for worker in workers:
        for user_id, events in worker.history.items():
            histories[user_id] += events
    for user_id, problem, entry in result["stale"][:10]:
        lines.append(f"  ! user {user_id} {problem}: {entry}")
        events = sorted(histories[user_id], key=lambda event: float(event.split("s")[0]))
        lines.append(f"    its requests: {'; '.join(events)}")

    failures = list(verdict.failures)
    checks = (
        (unexpected, f"{len(unexpected)} unexpected 5xx or connection errors"),
        (result["stale"], f"{len(result['stale'])} cached users differ from MySQL"),
        (result["lost"], f"{lost} acknowledged writes not in MySQL"),
        (bypass.late, f"{len(bypass.late)} writes in SQL never reached Redis"),
        (not bypass.lags, "no write in SQL was timed to Redis"),
        (not caught_up, "the follower did not catch up with the binary log"),
    )
    failures += [message for failed, message in checks if failed]
    return Report(lines, failures, verdict)


def _phase_table(verdict: LoadVerdict, bypass: BypassWriter) -> list[str]:
    """Operations and lag per phase, so a thread kind that stopped shows as a zero."""
    lags = [[] for _ in verdict.phases]
    for committed, lag in bypass.lags:
        lags[_phase_of(verdict.phases, committed)].append(lag * 1000)
    origin = verdict.phases[0].start
    lines = [
        "",
        f"| phase | seconds | {' | '.join(OPERATIONS)} | lag of the writes in SQL |",
        f"| --- | --- |{' --- |' * len(OPERATIONS)} --- |",
    ]
    for phase, counts, phase_lags in zip(verdict.phases, verdict.counts, lags, strict=True):
        operations = " | ".join(str(counts[kind]) for kind in OPERATIONS)
        lines.append(
            f"| {phase.name} | {phase.start - origin:.1f}-{phase.end - origin:.1f} | "
            f"{operations} | {_lag_figures(phase_lags)} |"
        )
    return [*lines, ""]


def _users(value: str) -> int:
    users = int(value)
    if users < 3:
        raise argparse.ArgumentTypeError("the writer in SQL changes up to 3 users at once")
    return users


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of the load (default 20)")
    parser.add_argument("--threads", type=int, default=6, help="client threads (default 6)")
    parser.add_argument(
        "--users", type=_users, default=200, help="users created first, 3 or more (default 200)"
    )
    parser.add_argument("--mysql-outage", type=float, default=2.0, help="seconds MySQL is down")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        type=lambda value: {fault for fault in value.split(",") if fault},
        help=f"comma-separated faults to inject (default: all of {', '.join(FAULTS)})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="usersvc-soak-") as tmp,
        soak_stack(Path(tmp)) as stack,
    ):
        report = run(args, stack, log)
    print("\n".join(report.lines))
    for failure in report.failures:
        print(f"  ! {failure}")
    print("\nPASS" if report.ok else "\nFAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
