"""Soak under faults: the production server under mixed load while its stores fail.

Starts its own mariadbd, redis-server and the service under gunicorn (production
settings), drives mostly reads with some creates, updates and deletes from
several threads, and meanwhile restarts Redis, pauses it, and stops MySQL for a
moment. At the end it reports requests, a status histogram and the 5xx count
(503s are expected only while MySQL is down), then checks consistency directly
in the stores: every cached user equals its MySQL row, and every acknowledged
write (201, 200, 204) is what MySQL holds.

    python -m tests.soak --seconds 20     # the short mode .ci/run uses
    python -m tests.soak --seconds 600    # a long soak

Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import MySQLdb
import redis

from tests.servers import MariaDBServer, RedisServer, WebService, service_stack
from users.entries import ABSENT_FIELD, NAME_OF, VERSION

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


FAULTS = ("redis-restart", "mysql-stop", "redis-pause")


def _faults(args, redis_server: RedisServer, mariadb: MariaDBServer, mysql_down, log) -> None:
    """Restart Redis at 1/4 of the run, stop MySQL at 1/2, pause Redis at 3/4."""
    start = time.monotonic()

    def at(fraction: float) -> None:
        time.sleep(max(0.0, start + args.seconds * fraction - time.monotonic()))

    at(0.25)
    if "redis-restart" in args.faults:
        log("fault: restarting redis-server (its data is lost)")
        redis_server.restart()
    at(0.5)
    if "mysql-stop" in args.faults:
        log(f"fault: stopping mariadbd for {args.mysql_outage}s")
        mysql_down.set()
        mariadb.stop()
        time.sleep(args.mysql_outage)
        mariadb.start()
        time.sleep(1.0)  # workers reconnect; a 503 just after the restart still counts
        mysql_down.clear()
        log("fault: mariadbd is back")
    at(0.75)
    if "redis-pause" in args.faults:
        log("fault: pausing redis-server for 1s (SIGSTOP)")
        redis_server.pause()
        time.sleep(1.0)
        redis_server.resume()


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
        service_stack(Path(tmp), THROTTLE_RATE_USER="off") as (mariadb, redis_server, web),
    ):
        web.start()
        log(f"service on port {web.port}; creating {args.users} users")
        seeded = [
            web.request("POST", "/api/user", {"username": f"seed{n}", "email": f"seed{n}@x.io"})[2][
                "id"
            ]
            for n in range(args.users)
        ]
        workers = [Worker(web, seed, seeded, started) for seed in range(args.threads)]
        stop, mysql_down = threading.Event(), threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop, mysql_down)) for w in workers]
        fault_thread = threading.Thread(
            target=_faults, args=(args, redis_server, mariadb, mysql_down, log)
        )
        log(f"load for {args.seconds}s from {args.threads} threads")
        load_started = time.monotonic()
        for thread in [*threads, fault_thread]:
            thread.start()
        fault_thread.join()
        time.sleep(max(0.0, args.seconds - (time.monotonic() - load_started)))
        stop.set()
        for thread in threads:
            thread.join()
        log("load stopped; letting the outbox drain")
        time.sleep(2.0)
        result = _check_stores(web, mariadb, redis_server, workers)

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
    for line in (unexpected + result["lost"])[:20]:
        print(f"  ! {line}")
    histories = collections.defaultdict(list)
    for worker in workers:
        for user_id, events in worker.history.items():
            histories[user_id] += events
    for user_id, problem, entry in result["stale"][:10]:
        print(f"  ! user {user_id} {problem}: {entry}")
        events = sorted(histories[user_id], key=lambda event: float(event.split("s")[0]))
        print(f"    its requests: {'; '.join(events)}")
    ok = not unexpected and not result["stale"] and not result["lost"]
    print("\nPASS" if ok else "\nFAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
