"""The run's figures as a Markdown table and a PNG chart, with the machine they came from.

Every figure is the median over the passes; every ratio is computed within each
pass (the two sides measured minutes apart on the same warm machine) and then
its median taken, so a slow spell between passes does not skew a ratio.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from django.conf import settings
from matplotlib.figure import Figure

from users.conf import user_cache_settings

from . import dataset, keys
from .cache_commands import FLUSH_COMMAND, WARM_COMMAND
from .load import WRK_THREADS
from .suite import (
    BATCH_SIZE,
    SCENARIO_BY_KEY,
    SCENARIOS,
    SERVER_TITLES,
    Options,
    PassResult,
    turn_count,
)

_WARM_TARGET_USERS = 1_000_000
# Units a target's figure keeps two decimals of.
_FRACTIONAL_UNITS = ("x", "per request")
# The service's scenarios, whose Redis commands are counted beyond the background's.
_SERVICE_SERVERS = ("service", "hot", "near-off")
# Colours of the chart, by the server a scenario drives.
_COLORS = {
    "service": "#1f5f8f", "hot": "#2a7ab9", "near-off": "#7fb3d9", "cache-off": "#c0504d",
    "constant": "#555555", "hgetall": "#888888", "django-cache": "#9bbb59",
    "cacheops": "#8064a2", "cachalot": "#e6a23c",
}  # fmt: skip


def machine_info() -> dict[str, str]:
    """What the figures depend on, for the reader who compares them with their own."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    commit = _git("rev-parse", "--short", "HEAD")
    # The results this writes are tracked files: changed, they say nothing of the code.
    if _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs/benchmarks"):
        commit += " with uncommitted changes"
    redis_info = keys.bench_client().info("server")
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or "unknown",
        # Anything else running on the machine skews the figures; this says how busy it
        # was before the run (and after it: see load_after).
        "load": load_average(),
        "cpu": f"{cpu_model}, {os.cpu_count()} cores",
        "memory": f"{memory_kib / 2**20:.0f} GiB",
        "os": f"{platform.freedesktop_os_release().get('PRETTY_NAME', 'Linux')},"
        f" kernel {platform.release()}",
        "python": platform.python_version(),
        "django": metadata.version("django"),
        "djangorestframework": metadata.version("djangorestframework"),
        "django-redis": metadata.version("django-redis"),
        "redis-py": metadata.version("redis"),
        "django-cacheops": metadata.version("django-cacheops"),
        "django-cachalot": metadata.version("django-cachalot"),
        "gunicorn": metadata.version("gunicorn"),
        "redis": redis_info["redis_version"],
        "mysql": dataset.server_version(),
        "wrk": wrk_version,
    }


def _git(*arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=settings.BASE_DIR, capture_output=True, text=True
    ).stdout.strip()


def load_average() -> str:
    """The 1-minute load average: how many processes wanted the cores, the bench's included."""
    return f"{os.getloadavg()[0]:.2f}"


def _median(values) -> float:
    return statistics.median(values)


def _http(passes: list[PassResult], scenario: str, figure: Callable) -> float:
    return _median(figure(one.http[scenario]) for one in passes)


def _ratios(passes: list[PassResult], scenario: str, baseline: str) -> list[float]:
    return [
        one.http[scenario].requests_per_second / one.http[baseline].requests_per_second
        for one in passes
    ]


def _commands_beyond_background(one: PassResult, scenario: str) -> float:
    """Redis commands per request that the requests caused. The authenticated floor
    reads nothing from Redis once its token is in the near cache, so its commands/s
    are the background's (rate counts added every RATE_SYNC_MS, tracking PINGs,
    every idle server's), which run per second whatever the request rate."""
    result, floor = one.http[scenario], one.http["floor"]
    return max(
        0.0,
        (result.redis_commands_per_second - floor.redis_commands_per_second)
        / result.requests_per_second,
    )


@dataclasses.dataclass(frozen=True)
class _Table:
    """A scenario's table: the servers that run it, and the rows each is compared with."""

    title: str
    note: str
    rows: tuple[str, ...]
    baselines: tuple[str, ...]


# What a ratio column calls each baseline.
_BASELINE_NAMES = {
    "constant": "plain DRF", "floor": "auth. floor", "hgetall-hit": "HGETALL",
    "django-cache-hit": "Django cache", "cacheops-hit": "cacheops", "cachalot-hit": "cachalot",
    "hit-near-off": "near off", "hot-near-off": "near off", "database": "database only",
    "database-walk": "database only", "django-cache-miss": "Django cache",
    "cacheops-miss": "cacheops", "cachalot-miss": "cachalot", "create-cache-off": "cache off",
    "cacheops-create": "cacheops", "cachalot-create": "cachalot", "patch-cache-off": "cache off",
    "cacheops-patch": "cacheops", "cachalot-patch": "cachalot",
}  # fmt: skip
_PEER_HITS = ("hgetall-hit", "django-cache-hit", "cacheops-hit", "cachalot-hit")


def _tables(options: Options) -> list[_Table]:
    return [
        _Table(
            f"Hot reads: ids uniform over users 1 to {options.hot_users:,}",
            "Every server's cache holds these users: the service's near caches (filled"
            " before the first pass), the peers' Redis (walked once before the first pass,"
            " cachalot's before every pass: its creates invalidate the whole table).",
            ("true-floor", "floor", "constant", "hot", "hot-near-off", *_PEER_HITS),
            ("constant", "floor", *_PEER_HITS),
        ),
        _Table(
            f"Uniform reads: ids uniform over users 1 to {options.users:,}",
            "All cached in Redis; the near cache holds a fraction of them. The peers'"
            " columns compare with their hot reads (one Redis round trip, whatever the id).",
            ("hit", "hit-near-off", "database", "batch", "not-modified"),
            ("hit-near-off", "database", *_PEER_HITS),
        ),
        _Table(
            "Miss then fill: each id once, never cached before",
            "Every server walks ids of its own cold pool in order, a fresh stretch every"
            " turn; the database-only path walks the same way with the same token.",
            ("miss", "database-walk", "django-cache-miss", "cacheops-miss", "cachalot-miss"),
            ("database-walk", "django-cache-miss", "cacheops-miss", "cachalot-miss"),
        ),
        _Table(
            "POST create",
            "A new username every request, no password (hashing one would be all it"
            " measured); the peers validate with a plain ModelSerializer.",
            ("create", "create-cache-off", "cacheops-create", "cachalot-create"),
            ("create-cache-off", "cacheops-create", "cachalot-create"),
        ),
        _Table(
            "PATCH",
            f"A new first name for ids uniform over {options.write_users:,} users no read"
            " scenario reads, without If-Match.",
            ("patch", "patch-cache-off", "cacheops-patch", "cachalot-patch"),
            ("patch-cache-off", "cacheops-patch", "cachalot-patch"),
        ),
    ]


def _ratio_cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"


def _near_cell(passes: list[PassResult], key: str) -> str:
    """The near cache's hit ratio over its lookups (tokens and users), per pass."""
    ratios = [one.http[key].near_hit_ratio for one in passes]
    if any(ratio is None for ratio in ratios):
        return ""
    return ", ".join(f"{ratio:.1%}" for ratio in ratios)


def _scenario_table(passes: list[PassResult], table: _Table) -> list[str]:
    rows = []
    for key in table.rows:
        scenario = SCENARIO_BY_KEY[key]
        per_pass = [one.http[key].requests_per_second for one in passes]
        ratios = [
            "" if key == baseline else _ratio_cell(_ratios(passes, key, baseline))
            for baseline in table.baselines
        ]
        rows.append(
            [
                f"{SERVER_TITLES[scenario.server]}: {scenario.title}",
                f"{_median(per_pass):,.0f}",
                ", ".join(f"{value:,.0f}" for value in per_pass),
                f"{_http(passes, key, lambda r: r.p50_ms):.2f}",
                f"{_http(passes, key, lambda r: r.p99_ms):.2f}",
                f"{_http(passes, key, lambda r: r.redis_commands_per_request):.2f}",
                _near_cell(passes, key),
                f"{_http(passes, key, lambda r: r.socket_errors):.0f}",
                *ratios,
            ]
        )
    return _table(
        [
            "server: view",
            "requests/s",
            "per pass",
            "p50 (ms)",
            "p99 (ms)",
            "Redis commands/request",
            "near-cache hits",
            "socket errors",
            *(f"x {_BASELINE_NAMES[baseline]}" for baseline in table.baselines),
        ],
        "lrrrrrrr" + "r" * len(table.baselines),
        rows,
    )


@dataclasses.dataclass(frozen=True)
class _Target:
    text: str
    per_pass: list[float]
    unit: str
    met: Callable[[float], bool]

    def rounded(self, value: float) -> float:
        """The value as the table shows it, which is also what the target is held to."""
        return round(value, 2) if self.unit in _FRACTIONAL_UNITS else round(value)

    def format(self, value: float) -> str:
        value = self.rounded(value)
        if self.unit == "x":
            return f"{value:.2f}x"
        if self.unit in _FRACTIONAL_UNITS:
            return f"{value:.2f} {self.unit}"
        return f"{value:,} {self.unit}"

    def row(self) -> list[str]:
        median = _median(self.per_pass)
        return [
            self.text,
            self.format(median),
            ", ".join(self.format(value) for value in self.per_pass),
            "pass" if self.met(self.rounded(median)) else "**fail**",
        ]


def _ahead_of_peers(passes: list[PassResult], scenario: str, peers: tuple[str, ...]) -> list:
    """Per pass, the service's requests/s over the fastest peer's."""
    return [
        one.http[scenario].requests_per_second
        / max(one.http[peer].requests_per_second for peer in peers)
        for one in passes
    ]


def _targets(passes: list[PassResult], options: Options) -> list[_Target]:
    """Issue 21's targets, then the earlier ones it does not replace."""

    def ratios(scenario: str, baseline: str) -> list[float]:
        return _ratios(passes, scenario, baseline)

    def at_least(threshold: float) -> Callable[[float], bool]:
        return lambda value: value >= threshold

    def at_most(threshold: float) -> Callable[[float], bool]:
        return lambda value: value <= threshold

    def commands(scenario: str) -> list[float]:
        return [_commands_beyond_background(one, scenario) for one in passes]

    warm_at = (
        "" if options.bulk_users >= _WARM_TARGET_USERS else f" (run at {options.bulk_users:,})"
    )
    return [
        _Target("1. authenticated floor ≥ 0.9 x plain DRF (default middleware, no auth)",
                ratios("floor", "constant"), "x", at_least(0.9)),
        _Target("1. hot GET with a token, near cache on ≥ 0.95 x authenticated floor",
                ratios("hot", "floor"), "x", at_least(0.95)),
        _Target(f"2. uniform GET over {options.users:,} users, near cache on ≥ 1.05 x off",
                ratios("hit", "hit-near-off"), "x", at_least(1.05)),
        _Target("2. hot GET, near cache on ≥ 1.3 x off", ratios("hot", "hot-near-off"), "x",
                at_least(1.3)),
        _Target("3. miss then fill ≥ 0.9 x database only (same auth)",
                ratios("miss", "database-walk"), "x", at_least(0.9)),
        _Target("3. miss then fill p99 ≤ 1.5 x database only's p99",
                [one.http["miss"].p99_ms / one.http["database-walk"].p99_ms for one in passes],
                "x", at_most(1.5)),
        _Target("3. Redis commands per miss, the token's included, ≤ 4", commands("miss"),
                "per request", at_most(4)),
        _Target(f"3. burst of {options.burst_ids:,} cold ids from {options.connections}"
                " clients: SELECTs of the most-read row (MySQL's general log) = 1",
                [one.burst.most_selects_of_a_row for one in passes], "per row",
                lambda most: most == 1),
        _Target("4. POST create ≥ 0.8 x cache off (same validation, same auth)",
                ratios("create", "create-cache-off"), "x", at_least(0.8)),
        _Target("4. PATCH ≥ 0.8 x cache off (same validation, same auth)",
                ratios("patch", "patch-cache-off"), "x", at_least(0.8)),
        _Target("4. Redis commands per create ≤ 4", commands("create"), "per request",
                at_most(4)),
        _Target("4. Redis commands per PATCH ≤ 4", commands("patch"), "per request",
                at_most(4)),
        _Target(f"5. warm of 1,000,000 users ≥ 100,000 users/s{warm_at}",
                [one.warm_users_per_s for one in passes], "users/s", at_least(100_000)),
        _Target(f"5. flush ≥ 300,000 keys/s{warm_at}",
                [one.flush_keys_per_s for one in passes], "keys/s", at_least(300_000)),
        _Target("5. ≤ 200 B of Redis per cached user (`INFO memory` delta)",
                [one.used_memory_per_user_bytes for one in passes], "B", at_most(200)),
        _Target("6. hot GET ahead of every peer's hit (x the fastest: HGETALL, Django cache,"
                " cacheops, cachalot)", _ahead_of_peers(passes, "hot", _PEER_HITS), "x",
                at_least(1)),
        _Target("6. miss then fill ahead of every peer's (x the fastest)",
                _ahead_of_peers(passes, "miss", ("django-cache-miss", "cacheops-miss",
                                                 "cachalot-miss")), "x", at_least(1)),
        _Target("6. POST create ahead of every peer's (x the fastest)",
                _ahead_of_peers(passes, "create", ("cacheops-create", "cachalot-create")),
                "x", at_least(1)),
        _Target("6. PATCH ahead of every peer's (x the fastest)",
                _ahead_of_peers(passes, "patch", ("cacheops-patch", "cachalot-patch")),
                "x", at_least(1)),
        _Target("hot GET: Redis commands per request, beyond the background's, ≤ 0.05",
                commands("hot"), "per request", at_most(0.05)),
        _Target("GET hit ≥ 2 x database only", ratios("hit", "database"), "x", at_least(2)),
        _Target(f"{BATCH_SIZE} cached users by `?ids=` ≥ 10 x single GET hits (users/s)",
                [ratio * BATCH_SIZE for ratio in ratios("batch", "hit")], "x", at_least(10)),
        _Target("`user_get` hit ≤ 1.3 x raw HGETALL (medians)",
                [one.user_get.median_us / one.hgetall.median_us for one in passes], "x",
                at_most(1.3)),
    ]  # fmt: skip


def _table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    separators = ["---:" if side == "r" else "---" for side in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(separators) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _burst_table(passes: list[PassResult], options: Options) -> list[str]:
    result = [one.http["burst"] for one in passes]
    rows = [
        ["requests/s", ", ".join(f"{r.requests_per_second:,.0f}" for r in result)],
        ["p50 / p99 (ms)", ", ".join(f"{r.p50_ms:.2f} / {r.p99_ms:.2f}" for r in result)],
        ["Redis commands/request",
         ", ".join(f"{r.redis_commands_per_request:.2f}" for r in result)],
        ["rows read by SELECTs / ids asked",
         ", ".join(f"{one.burst.row_selects:,} / {one.burst.ids:,}" for one in passes)],
        ["SELECTs of the most-read row", ", ".join(str(one.burst.most_selects_of_a_row)
                                                  for one in passes)],
        ["ids whose row no SELECT read", ", ".join(str(one.burst.rows_never_selected)
                                                  for one in passes)],
    ]  # fmt: skip
    return _table(["per pass", "value"], "lr", rows)


def markdown(passes: list[PassResult], options: Options, machine: dict[str, str]) -> str:
    def timing_row(title: str, timing: Callable) -> list[str]:
        return [
            title,
            f"{_median(timing(one).median_us for one in passes):.1f}",
            f"{_median(timing(one).p99_us for one in passes):.1f}",
        ]

    near_bytes = _median(one.near_bytes_per_entry for one in passes)
    near_size = user_cache_settings.NEAR_CACHE_SIZE
    turns = turn_count(options)
    lines = [
        "# Benchmarks",
        "",
        f"Taken {machine['date']} on {machine['cpu']}, {machine['memory']} of memory,"
        f" {machine['os']}: Python {machine['python']}, Django {machine['django']},"
        f" DRF {machine['djangorestframework']}, django-redis {machine['django-redis']},"
        f" redis-py {machine['redis-py']}, django-cacheops {machine['django-cacheops']},"
        f" django-cachalot {machine['django-cachalot']}, gunicorn {machine['gunicorn']},"
        f" Redis {machine['redis']}, MySQL {machine['mysql']}, wrk {machine['wrk']};"
        " all on the one machine, over loopback. Service at commit"
        f" `{machine['commit']}`; 1-minute load average before the run {machine['load']},"
        f" at its end {machine['load_after']}.",
        "",
        f"`./scripts/bench --users {options.users} --bulk-users {options.bulk_users}"
        f" --burst-ids {options.burst_ids} --duration {options.duration_s:g}"
        f" --repeat {options.repeat} --connections {options.connections}`: every server"
        " a gunicorn with gunicorn.conf.py (the service with its production settings);"
        f" wrk with {WRK_THREADS} threads and {options.connections} connections for"
        f" {options.duration_s:g} s per scenario and pass"
        + (
            f", in {turns} turns of each group's scenarios, the servers' order rotated every"
            " turn, so that a change in the machine's load reaches them alike."
            if turns > 1
            else "."
        )
        + (
            " One pass: each ratio is computed within it."
            if options.repeat == 1
            else f" Each figure is the median of {options.repeat} passes; each ratio is"
            " computed within a pass, then its median taken (the values of each pass in"
            " brackets)."
        )
        + " Redis commands per request count every command the bench's own Redis ran"
        " meanwhile (`INFO commandstats`), background work included.",
        "",
    ]
    for table in _tables(options):
        lines += [f"## {table.title}", "", table.note, "", *_scenario_table(passes, table), ""]
    lines += [
        f"## Burst: {options.burst_ids:,} cold ids, every one asked by all"
        f" {options.connections} connections at once",
        "",
        f"The connections ask `?ids=` batches of {BATCH_SIZE} consecutive cold ids, all"
        " of them the same batch at the same time, then the next: each id is asked"
        f" {options.connections} times at once, in a tenth of the requests single GETs"
        " would take. MySQL's general log is on while it runs: each SELECT of the user"
        " table is parsed for the ids it reads.",
        "",
        *_burst_table(passes, options),
        "",
        "## In process",
        "",
        *_table(
            ["call", "median (µs)", "p99 (µs)"],
            "lrr",
            [
                timing_row(
                    "`users.reads.user_get`, hit in Redis (near cache off)",
                    lambda one: one.user_get,
                ),
                timing_row("raw redis-py `HGETALL` round trip", lambda one: one.hgetall),
                timing_row(
                    "`users.reads.user_get`, hit in the near cache", lambda one: one.near_hit
                ),
            ],
        ),
        "",
        *_table(
            ["measure", "median", "per pass"],
            "lrr",
            [
                _measure_row(
                    passes,
                    f"`{WARM_COMMAND} --all`, {options.bulk_users:,} users",
                    lambda one: one.warm_users_per_s,
                    "{:,.0f} users/s",
                ),
                _measure_row(
                    passes,
                    f"`{FLUSH_COMMAND} --all`, {options.bulk_users:,} users",
                    lambda one: one.flush_keys_per_s,
                    "{:,.0f} keys/s",
                ),
                _measure_row(
                    passes,
                    "Redis memory per cached user, `MEMORY USAGE` (median of a sample)",
                    lambda one: one.memory_usage_bytes,
                    "{:,.0f} B",
                ),
                _measure_row(
                    passes,
                    "Redis memory per cached user, `INFO memory` `used_memory` delta / users",
                    lambda one: one.used_memory_per_user_bytes,
                    "{:,.0f} B",
                ),
                _measure_row(
                    passes,
                    "near cache memory per user entry (tracemalloc, per process)",
                    lambda one: one.near_bytes_per_entry,
                    "{:,.0f} B",
                ),
                [
                    f"near cache bound: `NEAR_CACHE_SIZE` {near_size:,} entries per process",
                    f"{near_bytes * near_size / 2**20:,.1f} MiB per process",
                    "",
                ],
            ],
        ),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "median", "per pass", "result"],
            "lrrl",
            [target.row() for target in _targets(passes, options)],
        ),
        "",
    ]
    return "\n".join(lines)


def _measure_row(passes: list[PassResult], title: str, value: Callable, form: str) -> list:
    values = [value(one) for one in passes]
    return [title, form.format(_median(values)), ", ".join(form.format(v) for v in values)]


def chart(passes: list[PassResult], options: Options, machine: dict[str, str], path: Path) -> None:
    """Requests/s (median, with the range over passes) and p50/p99, per scenario."""
    shown = [s for s in SCENARIOS if s.key != "burst"]
    labels = [f"{s.key} ({s.server})" for s in shown]
    # A bare Figure (no pyplot): no global state, and PNG output goes through Agg.
    figure = Figure(figsize=(16, 10))
    throughput, latency = figure.subplots(1, 2)
    positions = list(range(len(shown)))
    rates = [[one.http[s.key].requests_per_second for one in passes] for s in shown]
    medians = [_median(values) for values in rates]
    throughput.barh(
        positions,
        medians,
        xerr=[
            [m - min(values) for m, values in zip(medians, rates, strict=True)],
            [max(values) - m for m, values in zip(medians, rates, strict=True)],
        ],
        color=[_COLORS[s.server] for s in shown],
        capsize=3,
    )
    for position, value in zip(positions, medians, strict=True):
        throughput.annotate(
            f"{value:,.0f}", (value, position), xytext=(4, 0), textcoords="offset points",
            va="center", fontsize=8,
        )  # fmt: skip
    throughput.set_yticks(positions, labels, fontsize=8)
    throughput.invert_yaxis()
    throughput.margins(x=0.15)
    throughput.set_xlabel("requests/s (median; bars: range over passes)")
    throughput.set_title("Throughput")
    height = 0.4
    for offset, (name, figure_of) in enumerate(
        [("p50", lambda r: r.p50_ms), ("p99", lambda r: r.p99_ms)]
    ):
        latency.barh(
            [position + (offset - 0.5) * height for position in positions],
            [_http(passes, s.key, figure_of) for s in shown],
            height,
            label=name,
        )
    latency.set_xscale("log")
    latency.set_yticks(positions, labels, fontsize=8)
    latency.invert_yaxis()
    latency.set_xlabel("latency (ms, log scale)")
    latency.set_title("Latency")
    latency.legend()
    figure.suptitle(
        f"user service and its peers, {options.users:,} users, {options.connections}"
        f" connections, median of {options.repeat}: {machine['cpu']}, {machine['date']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
