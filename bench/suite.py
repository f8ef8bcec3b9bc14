"""One bench run: the data loaded, two servers up, then K passes over every measurement.

A pass measures everything once, in an order that leaves each scenario the cache
state it needs: warm, in-process timings; floor, hit and database only, in turns;
flush, miss then fill; create. Ratios are taken within a pass (report.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import tempfile
import time
from pathlib import Path

from django.core.management import call_command

from users.cache.near import near
from users.models import User

from . import cache_commands, dataset, keys, micro
from .environment import ALL_KEYS_PATTERN
from .load import LoadResult, run_wrk
from .server import Gunicorn, free_loopback_port

_WARMUP_S = 2
_TURN_S = 2
_SETTLE_CHECKS = 20
_SETTLE_INTERVAL_S = 0.5
_MEMORY_SAMPLES = 200
# Users per ?ids= request in the batch scenario: the API's most.
BATCH_SIZE = 100
# The hot set: ids 1..HOT_USERS, drawn from a Zipf law.
HOT_USERS = 5_000


@dataclasses.dataclass(frozen=True)
class Options:
    users: int
    duration_s: float
    repeat: int
    connections: int
    micro_calls: int


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    # The server it drives: "cached" (the service as deployed), "hot" (the same, for
    # the hot set alone: the other scenarios, run in turns with it, would fill its
    # near cache with their own users), "near-off" (its near cache off) or
    # "database" (Redis unreachable: every lookup goes to MySQL).
    server: str
    wrk_scenario: str


SCENARIOS = (
    Scenario(
        "true-floor",
        "1. true framework floor (DRF, production middleware, no auth, no I/O)",
        "cached",
        "true-floor",
    ),
    Scenario(
        "floor", "2. authenticated floor (the API's auth and renderer, no I/O)", "cached", "floor"
    ),
    Scenario("hit", "3. GET hit, uniform over all users, near cache on", "cached", "get-random"),
    Scenario(
        "hit-near-off",
        "4. GET hit, uniform over all users, near cache off",
        "near-off",
        "get-random",
    ),
    Scenario("hot", f"5. GET hit, Zipf over {HOT_USERS:,} users, near cache on", "hot", "get-zipf"),
    Scenario(
        "hot-near-off",
        f"6. GET hit, Zipf over {HOT_USERS:,} users, near cache off",
        "near-off",
        "get-zipf",
    ),
    Scenario(
        "miss", "7. GET miss then fill (cold cache, each id once)", "cached", "get-sequential"
    ),
    Scenario(
        "database", "8. GET, cache bypassed (database only, same auth)", "database", "get-random"
    ),
    Scenario("create", "9. POST create", "cached", "create"),
    Scenario("batch", f"10. GET {BATCH_SIZE} users by ?ids= (all cached)", "cached", "get-batch"),
    Scenario(
        "not-modified", "11. GET hit, If-None-Match matching (304)", "cached", "get-not-modified"
    ),
)


@dataclasses.dataclass(frozen=True)
class PassResult:
    http: dict[str, LoadResult]
    user_get: micro.Timing
    hgetall: micro.Timing
    near_hit: micro.Timing
    near_bytes_per_entry: float
    memory_usage_bytes: float
    used_memory_per_user_bytes: float
    warm_users_per_s: float
    flush_keys_per_s: float


def turn_count(options: Options) -> int:
    """How many turns floor, hit and database only take in each pass (about 2 s each)."""
    return max(1, round(options.duration_s / _TURN_S))


def run(options: Options, say) -> list[PassResult]:
    """Loads the data, starts the servers, runs the passes; cleans up after itself, always."""
    keys.delete_keys(ALL_KEYS_PATTERN)
    try:
        say(f"loading {options.users:,} users into a fresh bench database")
        dataset.recreate_database()
        dataset.load_users(options.users)
        token = dataset.create_staff_token()
        call_command("collectstatic", interactive=False, verbosity=0)
        with contextlib.ExitStack() as stack:
            log_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="usersvc-bench-"))
            )
            say(
                "starting gunicorn (production settings), a second one for the hot set, a"
                " third with its near cache off, and a fourth with Redis unreachable"
            )
            servers = {
                "cached": stack.enter_context(
                    Gunicorn(name="cached", token=token, log_dir=log_dir)
                ),
                "hot": stack.enter_context(Gunicorn(name="hot", token=token, log_dir=log_dir)),
                "near-off": stack.enter_context(
                    Gunicorn(name="near-off", token=token, log_dir=log_dir, NEAR_CACHE_SIZE="0")
                ),
                "database": stack.enter_context(
                    Gunicorn(
                        name="database",
                        token=token,
                        log_dir=log_dir,
                        REDIS_URL=f"redis://127.0.0.1:{free_loopback_port()}/0",
                    )
                ),
            }
            for server in servers.values():
                run_wrk(
                    url=server.url,
                    token=token,
                    scenario="floor",
                    duration_s=_WARMUP_S,
                    connections=options.connections,
                )
            return [
                _one_pass(options, servers, token, index, say) for index in range(options.repeat)
            ]
    finally:
        keys.delete_keys(ALL_KEYS_PATTERN)
        dataset.drop_database()


def _one_pass(options: Options, servers: dict, token: str, index: int, say) -> PassResult:
    say(f"pass {index + 1} of {options.repeat}")
    seed = index + 1

    keys.delete_keys(ALL_KEYS_PATTERN)
    # This process's own tracking connection would take every key the warm writes.
    near.forget()
    memory_before = micro.used_memory_bytes()
    user_count = User.objects.count()
    warm_users_per_s = user_count / cache_commands.run_timed(cache_commands.WARM_COMMAND)
    cached_users = keys.count_keys(keys.user_entries_pattern())
    if cached_users != user_count:
        raise RuntimeError(f"{cache_commands.WARM_COMMAND} cached {cached_users} of {user_count}")
    used_memory_per_user = (micro.used_memory_bytes() - memory_before) / cached_users
    memory_usage = micro.memory_usage_per_user(
        user_count=options.users, samples=_MEMORY_SAMPLES, seed=seed
    )
    user_get, hgetall = micro.time_user_get_and_hgetall(
        user_count=options.users, calls=options.micro_calls, seed=seed
    )
    near_hit = micro.time_near_hit(user_count=options.users, calls=options.micro_calls, seed=seed)
    near_bytes_per_entry = micro.near_cache_bytes_per_entry(user_count=options.users)
    near.forget()

    def load(scenario: Scenario, argument: str | None, duration_s: float) -> LoadResult:
        before = keys.commands_processed()
        result = run_wrk(
            url=servers[scenario.server].url,
            token=token,
            scenario=scenario.wrk_scenario,
            argument=argument,
            duration_s=duration_s,
            connections=options.connections,
        )
        return dataclasses.replace(result, redis_commands=keys.commands_processed() - before)

    (true_floor, floor, hit, hit_near_off, hot, hot_near_off, miss, database, create, batch,
     not_modified) = SCENARIOS  # fmt: skip
    last_id = str(options.users)
    hot_ids = str(min(HOT_USERS, options.users))
    http = {}
    _expect(servers["cached"], "/bench/floor", None)
    _expect(servers["cached"], "/api/user/1", "HIT")
    _expect(servers["database"], "/api/user/1", "BYPASS")
    # The warm above rewrote every entry, which emptied the near caches: fill them
    # as a hot set's traffic would, before measuring. A Zipf law's rare ids take
    # long to reach every worker: three times as long as a scenario runs.
    load(hot, hot_ids, 3 * options.duration_s)
    # The targets compare these, and the machine is shared: run in turns of a couple
    # of seconds, a change in its load reaches all of them alike.
    in_turns = (
        (true_floor, None),
        (floor, None),
        (hit, last_id),
        (hit_near_off, last_id),
        (hot, hot_ids),
        (hot_near_off, hot_ids),
        (database, last_id),
        (batch, f"{last_id}:{BATCH_SIZE}"),
        (not_modified, last_id),
    )
    say(f"  {', '.join(s.title for s, _ in in_turns)}: {turn_count(options)} turns each")
    turns: dict[str, list[LoadResult]] = {scenario.key: [] for scenario, _ in in_turns}
    for _ in range(turn_count(options)):
        for scenario, argument in in_turns:
            turn_s = options.duration_s / turn_count(options)
            turns[scenario.key].append(load(scenario, argument, turn_s))
    http.update({key: LoadResult.merged(results) for key, results in turns.items()})

    keys_before = keys.count_keys(ALL_KEYS_PATTERN)
    seconds = cache_commands.run_timed(cache_commands.FLUSH_COMMAND)
    flush_keys_per_s = (keys_before - keys.count_keys(ALL_KEYS_PATTERN)) / seconds
    # The walk needs every user uncached, and this also checks the flush.
    left = keys.count_keys(keys.user_keys_pattern())
    if left:
        raise RuntimeError(f"{cache_commands.FLUSH_COMMAND} left {left} user entries")
    say(f"  {miss.title}")
    http[miss.key] = load(miss, last_id, options.duration_s)
    # The walk's first id (2: wrk swallows 1, see scenarios.lua) is cached now.
    _expect(servers["cached"], "/api/user/2", "HIT")
    say(f"  {create.title}")
    http[create.key] = load(create, f"{index}{secrets.token_hex(4)}", options.duration_s)
    _wait_for_creates_in_flight(http[create.key].p999_ms / 1000)

    return PassResult(
        http=http,
        user_get=user_get,
        hgetall=hgetall,
        near_hit=near_hit,
        near_bytes_per_entry=near_bytes_per_entry,
        memory_usage_bytes=memory_usage,
        used_memory_per_user_bytes=used_memory_per_user,
        warm_users_per_s=warm_users_per_s,
        flush_keys_per_s=flush_keys_per_s,
    )


def _wait_for_creates_in_flight(slowest_create_s: float) -> None:
    """wrk stops with creates in flight, and the server finishes them after it: wait
    until the user count holds still for as long as a slow create takes, so the next
    pass starts on an idle server."""
    count = User.objects.count()
    for _ in range(_SETTLE_CHECKS):
        time.sleep(max(_SETTLE_INTERVAL_S, slowest_create_s))
        latest = User.objects.count()
        if latest == count:
            return
        count = latest
    raise RuntimeError("users were still being created long after the create scenario")


def _expect(server: Gunicorn, path: str, x_cache: str | None) -> None:
    """A probe before (or after) a scenario: the path answers 200 from the expected place."""
    status, source = server.get(path)
    if status != 200 or source != x_cache:
        raise RuntimeError(
            f"{server.name} {path}: expected 200 with X-Cache {x_cache}, got {status} {source}"
        )
