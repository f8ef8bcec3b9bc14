"""One bench run: the data loaded, the service and its peers up, then K passes.

A pass measures everything once: the bulk measures (warm, flush, memory) on their
own data; the in-process timings; then three groups of HTTP scenarios, each in
turns of a couple of seconds with the order of the servers rotated every round,
so that a change in the shared machine's load reaches every server alike:

* reads: the floors and every server's cached read;
* walks: a miss then fill on every server that fills a cache, and the
  database-only path, each on ids its cache has never held;
* writes: create and PATCH on the service, on the service with its cache off,
  and through cacheops and cachalot;

and between the walks and the writes, the burst of cold ids with MySQL's general
log on. Ratios are taken within a pass (report.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

from users.cache.near import near

from . import cache_commands, dataset, keys, micro
from .environment import BULK_DATABASE, BULK_KEY_PREFIX, database_url_of
from .load import LoadResult, run_wrk
from .server import Gunicorn, free_loopback_port

_TURN_S = 2
# Seconds of traffic each server gets once it is up, before anything is measured:
# a worker's first requests import and set up what later ones reuse.
_WARMUP_S = 2
_PROBE_TIMEOUT_S = 30
_MEMORY_SAMPLES = 200
# Users per ?ids= request in the batch scenario: the API's most.
BATCH_SIZE = 100
# The hot set: ids 1..HOT_USERS, drawn uniformly, which every worker's near cache holds.
HOT_USERS = 5_000
# Users the PATCH scenarios change, after the read range: no read scenario reads them.
WRITE_USERS = 10_000
# The most ids a walk takes a second, to size the cold pool the walks draw from.
_WALK_IDS_PER_S = 3_000
# Seconds a walk or a warm-up may run at most; each ends when its ids do.
_WALK_LIMIT_S = 600
_PEER_SETTINGS = "bench.peers.settings"
_BULK_REDIS_TIMEOUT_MS = 5_000
# The servers whose near cache is on: their near-cache hit ratio is read from their
# /metrics around each scenario.
_NEAR_CACHED = ("service", "hot")


@dataclasses.dataclass(frozen=True)
class Options:
    users: int
    bulk_users: int
    burst_ids: int
    duration_s: float
    repeat: int
    connections: int
    micro_calls: int

    @property
    def hot_users(self) -> int:
        return min(HOT_USERS, self.users)

    @property
    def write_first(self) -> int:
        return self.users + 1

    @property
    def write_users(self) -> int:
        return min(WRITE_USERS, self.users)

    @property
    def cold_first(self) -> int:
        """The first id of the cold pool the walks take from: never cached before."""
        return self.write_first + self.write_users

    @property
    def cold_users(self) -> int:
        return self.repeat * max(1_000, math.ceil(self.duration_s * _WALK_IDS_PER_S))

    @property
    def burst_first(self) -> int:
        return self.cold_first + self.cold_users

    @property
    def last_id(self) -> int:
        return self.burst_first + self.repeat * self.burst_ids - 1


@dataclasses.dataclass(frozen=True)
class Server:
    """A gunicorn the bench starts: the service (``config.wsgi``), a variant of it, or
    a peer (``bench.peers``)."""

    key: str
    title: str
    app: str = "config.wsgi"
    authenticated: bool = True
    ready_path: str = "/bench/floor"
    environment: tuple[tuple[str, str], ...] = ()


def _peer(key: str, title: str, settings_module: str = _PEER_SETTINGS) -> Server:
    return Server(
        key,
        title,
        app="bench.peers.wsgi",
        authenticated=False,
        ready_path="/constant",
        environment=(("DJANGO_SETTINGS_MODULE", settings_module),),
    )


SERVERS = (
    Server("service", "the service"),
    # The hot set on a server of its own: the other reads, run in turns with it,
    # would fill a shared near cache with their own users.
    Server("hot", "the service, hot set only"),
    Server("near-off", "the service, near cache off", environment=(("NEAR_CACHE_SIZE", "0"),)),
    # REDIS_URL is set to a closed port when the server starts.
    Server("cache-off", "the service, cache off", app="bench.cache_off"),
    _peer("constant", "plain DRF APIView"),
    _peer("hgetall", "hand-written DRF view, HGETALL"),
    _peer("django-cache", "Django's cache API"),
    _peer("cacheops", "django-cacheops", "bench.peers.settings_cacheops"),
    _peer("cachalot", "django-cachalot", "bench.peers.settings_cachalot"),
)
SERVER_TITLES = {server.key: server.title for server in SERVERS}


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    server: str
    # bench/scenarios.lua's scenario, and the path it requests.
    wrk: str
    path: str
    # "reads", "walks", "writes", or "burst"; the walks take fresh ids every turn.
    group: str


def _read(key: str, title: str, server: str, wrk: str, path: str) -> Scenario:
    return Scenario(key, title, server, wrk, path, "reads")


SCENARIOS = (
    _read("true-floor", "true framework floor: DRF, production middleware, no auth, no I/O",
          "service", "fixed", "/bench/true-floor"),
    _read("floor", "authenticated floor: the API's auth, throttle and renderer, no I/O",
          "service", "fixed", "/bench/floor"),
    _read("constant", "plain DRF APIView, constant dict, default middleware, no auth",
          "constant", "fixed", "/constant"),
    _read("hot", "GET /api/user/<id> with a token, near cache on", "hot", "get-random",
          "/api/user/"),
    _read("hot-near-off", "GET /api/user/<id> with a token, near cache off", "near-off",
          "get-random", "/api/user/"),
    _read("hgetall-hit", "hand-written DRF view, one HGETALL, no auth", "hgetall",
          "get-random", "/hgetall/"),
    _read("django-cache-hit", "Django's cache API (django-redis, pickled dict), no auth",
          "django-cache", "get-random", "/cache/"),
    _read("cacheops-hit", "django-cacheops .cache().get() + ModelSerializer, no auth",
          "cacheops", "get-random", "/cacheops/"),
    _read("cachalot-hit", "django-cachalot .get() + ModelSerializer, no auth", "cachalot",
          "get-random", "/cachalot/"),
    _read("hit", "GET /api/user/<id> with a token, near cache on", "service", "get-random",
          "/api/user/"),
    _read("hit-near-off", "GET /api/user/<id> with a token, near cache off", "near-off",
          "get-random", "/api/user/"),
    _read("database", "GET /api/user/<id> with a token, cache off (database only)",
          "cache-off", "get-random", "/api/user/"),
    _read("batch", f"GET /api/user/batch?ids= ({BATCH_SIZE} ids) with a token", "service",
          "get-batch", "/api/user/batch"),
    _read("not-modified", "GET /api/user/<id> with a token and If-None-Match (304)", "service",
          "get-not-modified", "/api/user/"),
    Scenario("miss", "GET /api/user/<id> with a token, miss then fill", "service",
             "get-sequential", "/api/user/", "walks"),
    Scenario("database-walk", "GET /api/user/<id> with a token, cache off (database only)",
             "cache-off", "get-sequential", "/api/user/", "walks"),
    Scenario("django-cache-miss", "Django's cache API, miss then fill, no auth", "django-cache",
             "get-sequential", "/cache/", "walks"),
    Scenario("cacheops-miss", "django-cacheops, miss then fill, no auth", "cacheops",
             "get-sequential", "/cacheops/", "walks"),
    Scenario("cachalot-miss", "django-cachalot, miss then fill, no auth", "cachalot",
             "get-sequential", "/cachalot/", "walks"),
    Scenario("burst", f"GET /api/user/batch?ids= ({BATCH_SIZE} ids) with a token, every"
             " connection on the same cold ids at once", "service", "get-burst", "/api/user/batch",
             "burst"),
    Scenario("create", "POST /api/user with a token", "service", "create", "/api/user",
             "writes"),
    Scenario("create-cache-off", "POST /api/user with a token, cache off", "cache-off",
             "create", "/api/user", "writes"),
    Scenario("cacheops-create", "ModelSerializer create through django-cacheops, no auth",
             "cacheops", "create", "/users", "writes"),
    Scenario("cachalot-create", "ModelSerializer create through django-cachalot, no auth",
             "cachalot", "create", "/users", "writes"),
    Scenario("patch", "PATCH /api/user/<id> with a token", "service", "patch", "/api/user/",
             "writes"),
    Scenario("patch-cache-off", "PATCH /api/user/<id> with a token, cache off", "cache-off",
             "patch", "/api/user/", "writes"),
    Scenario("cacheops-patch", "ModelSerializer PATCH through django-cacheops, no auth",
             "cacheops", "patch", "/users/", "writes"),
    Scenario("cachalot-patch", "ModelSerializer PATCH through django-cachalot, no auth",
             "cachalot", "patch", "/users/", "writes"),
)  # fmt: skip
SCENARIO_BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}
# The peers that cache users in Redis, whose hot set is walked once before the reads.
_CACHING_PEERS = {"django-cache-hit": "/cache/", "cacheops-hit": "/cacheops/",
                  "cachalot-hit": "/cachalot/"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class BurstResult:
    """What MySQL's general log recorded while the burst ran: for each id asked, how
    many SELECT statements read its row."""

    ids: int
    selects_per_row: collections.Counter[int]
    statements: int

    @property
    def most_selects_of_a_row(self) -> int:
        return max(self.selects_per_row.values(), default=0)

    @property
    def rows_never_selected(self) -> int:
        return self.ids - len(self.selects_per_row)

    @property
    def row_selects(self) -> int:
        return sum(self.selects_per_row.values())


@dataclasses.dataclass(frozen=True)
class PassResult:
    http: dict[str, LoadResult]
    burst: BurstResult
    user_get: micro.Timing
    hgetall: micro.Timing
    near_hit: micro.Timing
    near_bytes_per_entry: float
    memory_usage_bytes: float
    used_memory_per_user_bytes: float
    warm_users_per_s: float
    flush_keys_per_s: float


def turn_count(options: Options) -> int:
    """How many turns each scenario of a group takes in each pass (about 2 s each)."""
    return max(1, round(options.duration_s / _TURN_S))


def run(options: Options, say) -> list[PassResult]:
    """Loads the data, starts the servers, runs the passes; stops every server, always."""
    say(
        f"loading {options.last_id:,} users (reads 1 to {options.users:,}, then the writes'"
        f" users, then cold ids for the walks and the bursts), and {options.bulk_users:,}"
        " users for the bulk measures"
    )
    dataset.recreate_database()
    dataset.load_users(1, options.cold_first - 1)
    _bulk("load", str(options.bulk_users))
    call_command("collectstatic", interactive=False, verbosity=0)
    # The users the reads and the writes use are cached; the walks' and the bursts'
    # never were.
    call_command(cache_commands.WARM_COMMAND, "--all", verbosity=0)
    dataset.load_users(options.cold_first, options.last_id)
    token = dataset.create_staff_token()
    near.forget()
    with contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="usersvc-bench-")))
        say(f"starting {len(SERVERS)} gunicorns: {', '.join(s.title for s in SERVERS)}")
        servers = {}
        for server in SERVERS:
            environment = dict(server.environment)
            if server.key == "cache-off":
                environment["REDIS_URL"] = f"redis://127.0.0.1:{free_loopback_port()}/0"
            servers[server.key] = stack.enter_context(
                Gunicorn(
                    name=server.key,
                    log_dir=log_dir,
                    app=server.app,
                    token=token if server.authenticated else None,
                    ready_path=server.ready_path,
                    **environment,
                )
            )
        for server in SERVERS:
            run_wrk(
                url=servers[server.key].url,
                token=servers[server.key].token,
                scenario="fixed",
                path=server.ready_path,
                duration_s=_WARMUP_S,
                connections=options.connections,
            )
        cursors = {s.key: options.cold_first for s in SCENARIOS if s.group == "walks"}
        return [_one_pass(options, servers, cursors, index, say) for index in range(options.repeat)]


def _bulk(*arguments: str) -> dict:
    """``python -m bench.bulk`` on the bulk data (its database, its key prefix)."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.bulk", *arguments],
        cwd=settings.BASE_DIR,
        env={
            **os.environ,
            "DATABASE_URL": database_url_of(os.environ["DATABASE_URL"], BULK_DATABASE),
            "CACHE_KEY_PREFIX": BULK_KEY_PREFIX,
            # The service's 100 ms is for requests, which bypass a slow Redis; a
            # batch job waits for it, as an operator runs one: a SCAN page on a
            # loaded machine can take longer, and would abort the flush.
            "REDIS_READ_TIMEOUT_MS": str(_BULK_REDIS_TIMEOUT_MS),
        },
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"bench.bulk {' '.join(arguments)} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _one_pass(options: Options, servers: dict, cursors: dict, index: int, say) -> PassResult:
    say(f"pass {index + 1} of {options.repeat}")
    seed = index + 1

    say(f"  bulk: warm and flush of {options.bulk_users:,} users")
    memory_before = micro.used_memory_bytes()
    warmed = _bulk("warm", str(seed))
    used_memory_per_user = (micro.used_memory_bytes() - memory_before) / warmed["users"]
    flushed = _bulk("flush")

    say("  in process: user_get against HGETALL, near-cache hits and memory")
    near.forget()
    user_get, hgetall = micro.time_user_get_and_hgetall(
        user_count=options.users, calls=options.micro_calls, seed=seed
    )
    near_hit = micro.time_near_hit(user_count=options.users, calls=options.micro_calls, seed=seed)
    near_bytes_per_entry = micro.near_cache_bytes_per_entry(user_count=options.users)
    near.forget()

    def load(scenario: Scenario, argument: str = "-", duration_s: float | None = None):
        server = servers[scenario.server]
        near_before = server.near_cache_lookups() if scenario.server in _NEAR_CACHED else (0.0, 0.0)
        before = keys.commands_processed()
        result = run_wrk(
            url=server.url,
            token=server.token,
            scenario=scenario.wrk,
            path=scenario.path,
            argument=argument,
            duration_s=options.duration_s if duration_s is None else duration_s,
            connections=options.connections,
        )
        commands = keys.commands_processed() - before
        near_after = server.near_cache_lookups() if scenario.server in _NEAR_CACHED else (0.0, 0.0)
        return dataclasses.replace(
            result,
            redis_commands=commands,
            near_hits=near_after[0] - near_before[0],
            near_misses=near_after[1] - near_before[1],
        )

    hot = f"1:{options.hot_users}"
    everyone = f"1:{options.users}"
    writes = f"{options.write_first}:{options.write_first + options.write_users - 1}"
    _expect(servers["service"], "/bench/floor", None)
    _expect(servers["service"], "/api/user/1", "HIT")
    _expect(servers["cache-off"], "/api/user/1", "BYPASS")
    # The first pass fills every caching peer's hot set; later ones only cachalot's,
    # whose creates in the pass before invalidated every query on the user table
    # (cacheops invalidates the queries a written row matches: not the hot set's).
    refill = _CACHING_PEERS if index == 0 else {"cachalot-hit": _CACHING_PEERS["cachalot-hit"]}
    say(f"  hot set walked once on {', '.join(refill)}; the hot set's near caches filled")
    for scenario_key, path in refill.items():
        walk = dataclasses.replace(SCENARIO_BY_KEY[scenario_key], wrk="get-sequential", path=path)
        load(walk, hot, _WALK_LIMIT_S)
    # Each id must reach every worker's near cache: three scenario lengths at first,
    # one after (the near caches keep the hot set between passes).
    load(SCENARIO_BY_KEY["hot"], hot, options.duration_s * (3 if index == 0 else 1))

    arguments = {
        "fixed": "-",
        "get-random": everyone,
        "get-batch": f"{everyone}:{BATCH_SIZE}",
        "get-not-modified": everyone,
        "patch": writes,
    }
    hot_set = {"hot", "hot-near-off", *_CACHING_PEERS, "hgetall-hit"}
    http: dict[str, LoadResult] = {}

    def in_turns(group: str, argument_of) -> None:
        scenarios = [s for s in SCENARIOS if s.group == group]
        say(f"  {group}: {len(scenarios)} scenarios, {turn_count(options)} turns each")
        turns: dict[str, list[LoadResult]] = {s.key: [] for s in scenarios}
        turn_s = options.duration_s / turn_count(options)
        for round_index in range(turn_count(options)):
            shift = (round_index + index) % len(scenarios)
            for scenario in scenarios[shift:] + scenarios[:shift]:
                result = load(scenario, argument_of(scenario), turn_s)
                turns[scenario.key].append(result)
                if scenario.group == "walks":
                    # Past every id this turn asked for, those in flight included.
                    cursors[scenario.key] += result.requests + 2 * options.connections
                elif scenario.group == "writes":
                    # The writes still in flight finish before the next server's turn.
                    time.sleep(result.p999_ms / 1000)
        http.update({key: LoadResult.merged(results) for key, results in turns.items()})

    in_turns("reads", lambda s: hot if s.key in hot_set else arguments[s.wrk])
    cold_last = options.cold_first + options.cold_users - 1
    in_turns("walks", lambda s: f"{cursors[s.key]}:{cold_last}")
    burst_scenario = SCENARIO_BY_KEY["burst"]
    first = options.burst_first + index * options.burst_ids
    last = first + options.burst_ids - 1
    say(f"  {burst_scenario.title}: ids {first:,} to {last:,}")
    dataset.general_log_on()
    try:
        http["burst"] = load(burst_scenario, f"{first}:{last}:{BATCH_SIZE}", _WALK_LIMIT_S)
    finally:
        statements = dataset.general_log_off()
    burst = _selects_per_row(statements, first, last)
    in_turns("writes", lambda s: arguments.get(s.wrk, f"{index}{secrets.token_hex(4)}"))

    return PassResult(
        http=http,
        burst=burst,
        user_get=user_get,
        hgetall=hgetall,
        near_hit=near_hit,
        near_bytes_per_entry=near_bytes_per_entry,
        memory_usage_bytes=warmed["memory_usage_bytes"],
        used_memory_per_user_bytes=used_memory_per_user,
        warm_users_per_s=warmed["users"] / warmed["seconds"],
        flush_keys_per_s=flushed["keys"] / flushed["seconds"],
    )


# A SELECT that reads user rows by id, as the ORM writes it:
# ... FROM `users_user` WHERE `users_user`.`id` IN (5, 6) or ... = 5
_USER_SELECT = re.compile(r"^\s*SELECT\b.*\bFROM `users_user`", re.IGNORECASE | re.DOTALL)
_ID_CONDITION = re.compile(r"`users_user`\.`id`\s*(?:IN\s*\(([\d,\s]+)\)|=\s*(\d+))")


def _selects_per_row(statements: list[str], first: int, last: int) -> BurstResult:
    """Per id in first..last, the SELECT statements on the user table that named it."""
    counted: collections.Counter[int] = collections.Counter()
    for statement in statements:
        if not _USER_SELECT.match(statement):
            continue
        for listed, single in _ID_CONDITION.findall(statement):
            ids = [int(part) for part in listed.split(",")] if listed else [int(single)]
            counted.update(user_id for user_id in set(ids) if first <= user_id <= last)
    return BurstResult(ids=last - first + 1, selects_per_row=counted, statements=len(statements))


def _expect(server: Gunicorn, path: str, x_cache: str | None) -> None:
    """A probe before the scenarios: the path answers 200 from the expected place,
    within a while (a breaker opened by a Redis call past its timeout on a loaded
    machine closes again after its cooldown)."""
    deadline = time.monotonic() + _PROBE_TIMEOUT_S
    while True:
        status, source = server.get(path)
        if status == 200 and source == x_cache:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} {path}: expected 200 with X-Cache {x_cache}, got {status} {source}"
            )
        time.sleep(0.5)
