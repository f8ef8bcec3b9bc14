"""Soak under faults: the production server under mixed load while its stores fail.

Starts its own mariadbd (with the binary log on), redis-server, the service under
gunicorn (production settings) and the binary log follower, drives mostly reads
with some creates, updates and deletes from several threads, and meanwhile
restarts Redis, pauses it, and stops MySQL for a moment. Beside the API's
clients, a writer changes cached users in raw SQL, behind the service's back
(single rows, several rows in one statement, transactions, deletes), and times
how long each change takes to reach Redis through the follower. At the end it
reports requests, a status histogram and the 5xx count (503s are expected only
while MySQL is down), the bypassing writes' lag, then lets the follower catch up
and checks consistency directly in the stores: every cached user equals its
MySQL row, and every acknowledged write (201, 200, 204) is what MySQL holds.

    python -m tests.soak --seconds 20     # the short mode .ci/run uses
    python -m tests.soak --seconds 600    # a long soak

Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import math
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import MySQLdb
import redis

from tests.servers import BinlogFollower, MariaDBServer, RedisServer, WebService, service_stack
from users.entries import ABSENT_FIELD, NAME_OF, SCHEMA_VERSION, VERSION

FIRST_NAME = NAME_OF["first_name"]

# A write's effect is certain only when it was acknowledged; a write that failed
# with a 5xx may or may not have committed, so its user is checked for cache
# consistency only.
ACKNOWLEDGED = {200, 201, 204}


@dataclass
class Worker:
    """One client thread; it alone writes the users it owns, so the last write it
    saw acknowledged is what MySQL must hold."""

    web: WebService
    seed: int
    readable_ids: list[int]
    started: float
    owned: dict[int, dict | None] = field(default_factory=dict)
    uncertain: set[int] = field(default_factory=set)
    statuses: collections.Counter = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    # What happened to each user, to explain a failed check: "time METHOD status cache".
    history: collections.defaultdict = field(default_factory=lambda: collections.defaultdict(list))

    def run(self, stop: threading.Event, mysql_down: threading.Event) -> None:
        rng = random.Random(self.seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=10)
        counter = 0
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.80:
                user_id = rng.choice(self.readable_ids + list(self.owned))
                method, path, body = "GET", f"/api/user/{user_id}", None
            elif roll < 0.88 or not self.owned:
                counter += 1
                name = f"w{self.seed}-{counter}"
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
    user_ids: list[int]
    lags: list[float] = field(default_factory=list)
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
                self._write(connection.cursor(), rng, f"sql{counter}", faulting)
            except (MySQLdb.Error, redis.RedisError):
                connection = None  # a fault began: reconnect once it is over

    def _write(self, cursor, rng: random.Random, value: str, faulting) -> None:
        client = redis.Redis(port=self.redis_server.port, decode_responses=True, socket_timeout=2)
        ids = rng.sample(self.user_ids, 3)
        before = {user_id: client.hget(self._key(user_id), FIRST_NAME) for user_id in ids}
        roll = rng.random()
        set_value = "SET first_name = %s, version = version + 1"
        if roll < 0.6:
            shape, changed = "single-row update", ids[:1]
            cursor.execute(f"UPDATE users_user {set_value} WHERE id = %s", [value, ids[0]])
        elif roll < 0.8:
            shape, changed = "multi-row update", ids
            cursor.execute(f"UPDATE users_user {set_value} WHERE id IN (%s, %s, %s)", [value, *ids])
        elif roll < 0.95:
            shape, changed = "transaction", ids[:2]
            cursor.execute("BEGIN")
            for user_id in changed:
                cursor.execute(f"UPDATE users_user {set_value} WHERE id = %s", [value, user_id])
            cursor.execute("COMMIT")
        else:
            shape, changed = "delete", ids[:1]
            cursor.execute("DELETE FROM users_user WHERE id = %s", [ids[0]])
            self.user_ids.remove(ids[0])
        committed = time.monotonic()
        self.shapes[shape] += 1
        waiting = {user_id for user_id in changed if before[user_id] is not None}
        timed, disturbed = bool(waiting), faulting.is_set()
        while waiting:
            waiting = {
                user_id for user_id in waiting
                if client.hget(self._key(user_id), FIRST_NAME) == before[user_id]
            }  # fmt: skip
            elapsed = time.monotonic() - committed
            if elapsed > self.GIVE_UP_SECONDS:
                self.late += [f"user {user_id}: {shape} not in Redis after {elapsed:.0f}s"
                              for user_id in waiting]  # fmt: skip
                return
            disturbed = disturbed or faulting.is_set()
            time.sleep(0.001)
        if timed and not disturbed:
            self.lags.append(time.monotonic() - committed)

    def _key(self, user_id: int) -> str:
        return f"{self.key_prefix}:v{SCHEMA_VERSION}:user:{{{user_id}}}"


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


FAULTS = ("redis-restart", "mysql-stop", "redis-pause")


def _faults(
    args, redis_server: RedisServer, mariadb: MariaDBServer, mysql_down, faulting, log
) -> None:
    """Restart Redis at 1/4 of the run, stop MySQL at 1/2, pause Redis at 3/4.
    ``faulting`` is set during each, and for a second after."""
    start = time.monotonic()

    def at(fraction: float) -> None:
        time.sleep(max(0.0, start + args.seconds * fraction - time.monotonic()))

    at(0.25)
    if "redis-restart" in args.faults:
        log("fault: restarting redis-server (its data is lost)")
        faulting.set()
        redis_server.restart()
        time.sleep(1.0)
        faulting.clear()
    at(0.5)
    if "mysql-stop" in args.faults:
        log(f"fault: stopping mariadbd for {args.mysql_outage}s")
        faulting.set()
        mysql_down.set()
        mariadb.stop()
        time.sleep(args.mysql_outage)
        mariadb.start()
        time.sleep(1.0)  # workers reconnect; a 503 just after the restart still counts
        mysql_down.clear()
        faulting.clear()
        log("fault: mariadbd is back")
    at(0.75)
    if "redis-pause" in args.faults:
        log("fault: pausing redis-server for 1s (SIGSTOP)")
        faulting.set()
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()
        time.sleep(1.0)
        faulting.clear()


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
    for key in client.scan_iter(match=f"{web.env['CACHE_KEY_PREFIX']}:v*:user:*", count=1000):
        if key.endswith(":lease"):
            continue
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="length of the load (default 20)")
    parser.add_argument("--threads", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--users", type=int, default=200, help="users created first (default 200)")
    parser.add_argument("--mysql-outage", type=float, default=2.0, help="seconds MySQL is down")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        type=lambda value: {fault for fault in value.split(",") if fault},
        help=f"comma-separated faults to inject (default: all of {', '.join(FAULTS)})",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="usersvc-soak-") as tmp,
        service_stack(Path(tmp), binlog=True, THROTTLE_RATE_USER="off") as (
            mariadb, redis_server, web,
        ),
    ):  # fmt: skip
        web.start()
        follower = BinlogFollower(Path(tmp), web.env)
        follower.start()
        log(f"service on port {web.port}, follower on {follower.port}; creating {args.users} users")
        seeded = [
            web.request("POST", "/api/user", {"username": f"seed{n}", "email": f"seed{n}@x.io"})[2][
                "id"
            ]
            for n in range(args.users)
        ]
        workers = [Worker(web, seed, seeded, started) for seed in range(args.threads)]
        # Its own list: the users it deletes stay readable (a 404) for the others.
        bypass = BypassWriter(mariadb, redis_server, web.env["CACHE_KEY_PREFIX"], list(seeded))
        stop, mysql_down, faulting = threading.Event(), threading.Event(), threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop, mysql_down)) for w in workers]
        threads.append(threading.Thread(target=bypass.run, args=(stop, faulting)))
        fault_thread = threading.Thread(
            target=_faults, args=(args, redis_server, mariadb, mysql_down, faulting, log)
        )
        log(f"load for {args.seconds}s from {args.threads} threads and a writer in SQL")
        load_started = time.monotonic()
        follower_before = follower.metrics()
        for thread in [*threads, fault_thread]:
            thread.start()
        fault_thread.join()
        time.sleep(max(0.0, args.seconds - (time.monotonic() - load_started)))
        stop.set()
        for thread in threads:
            thread.join()
        load_seconds = time.monotonic() - load_started
        follower_after = follower.metrics()
        log("load stopped; letting the outbox drain and the follower catch up")
        time.sleep(2.0)
        caught_up = _caught_up(follower, mariadb, timeout=60)
        result = _check_stores(web, mariadb, redis_server, workers)
        follower.stop()

    statuses = collections.Counter()
    for worker in workers:
        statuses.update(worker.statuses)
    unexpected = [line for worker in workers for line in worker.unexpected]
    total = sum(statuses.values())
    print("\n## Soak result\n")
    rate = total / args.seconds
    print(f"- requests: {total} in {args.seconds:.0f}s ({rate:.0f}/s), {args.threads} threads")
    print(
        "- statuses: "
        + ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items(), key=str))
    )
    print(f"- 5xx outside the MySQL outage, or connection errors: {len(unexpected)}")
    print(
        f"- 503 during the MySQL outage: {statuses[503] - sum('-> 503' in u for u in unexpected)}"
    )
    print(
        f"- cached users checked against MySQL: {result['cached']}, stale: {len(result['stale'])}"
    )
    lost = len(result["lost"])
    print(f"- acknowledged writes checked: {result['acknowledged']}, not in MySQL: {lost}")
    shapes = ", ".join(f"{shape}: {n}" for shape, n in sorted(bypass.shapes.items()))
    print(f"- writes in SQL behind the service: {sum(bypass.shapes.values())} ({shapes})")
    lags_ms = [lag * 1000 for lag in bypass.lags]
    print(
        f"- their lag to Redis, commit to old state gone, outside faults: {len(lags_ms)} timed, "
        f"median {_percentile(lags_ms, 0.5):.1f} ms, p99 {_percentile(lags_ms, 0.99):.1f} ms, "
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
    print(
        f"- follower: {events:.0f} events ({events / load_seconds:.0f}/s), {rows:.0f} rows of "
        f"users and tokens; retried errors: mysql {errors['mysql']:.0f}, "
        f"redis {errors['redis']:.0f}"
    )
    print(f"- follower caught up with the binary log after the load: {caught_up}")
    for line in (unexpected + result["lost"] + bypass.late)[:20]:
        print(f"  ! {line}")
    histories = collections.defaultdict(list)
    for worker in workers:
        for user_id, events in worker.history.items():
            histories[user_id] += events
    for user_id, problem, entry in result["stale"][:10]:
        print(f"  ! user {user_id} {problem}: {entry}")
        events = sorted(histories[user_id], key=lambda event: float(event.split("s")[0]))
        print(f"    its requests: {'; '.join(events)}")
    ok = (
        not unexpected and not result["stale"] and not result["lost"] and not bypass.late
        and bool(bypass.lags) and caught_up
    )  # fmt: skip
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
